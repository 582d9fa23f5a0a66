"""Sampling one video: container check, PyAV decoding, frames picked by seeking, never by decoding
the whole file (runs on the intake's thread pool, never on the event loop).

The video is cut into ``n`` equal segments (``videoplan.plan``) and one frame is taken from each
(``videosampler.Sampler``): the segment's keyframe when it has one and ``keyframe_snap`` is on,
otherwise the frame on screen at the segment's middle. Each picked frame is made model-ready at
once (``videoframe.Shaper``: upright, scaled) and hashed like an image.

Time and memory are bounded: a pixel cap from the header, a deadline checked at every frame and
packet, and only the sampled frames (at model size) are kept. Every PyAV error is translated by
``map_av_errors``; bad bytes are a 400, never a 500.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Final

import av
import av.container

from vlmserve.errors import MediaError, VlmserveError
from vlmserve.media.identity import image_identity, video_identity
from vlmserve.media.sniff import SNIFF_BYTES, sniff_video
from vlmserve.media.types import PreparedVideo, VideoPolicy
from vlmserve.media.videoframe import Shaper
from vlmserve.media.videoplan import plan
from vlmserve.media.videosampler import Deadline, Sampler, Shot
from vlmserve.settings import MediaSettings

_DEMUXERS: Final = {"MP4": "mov", "MOV": "mov", "MKV": "matroska", "WEBM": "matroska"}


@dataclass(frozen=True, slots=True)
class VideoSizing:
    """Everything besides the bytes that decides the sampled frames (part of the cache key)."""

    policy: VideoPolicy
    max_pixels: int
    timeout_s: float


def sizing_for(policy: VideoPolicy, settings: MediaSettings) -> VideoSizing:
    return VideoSizing(policy, settings.max_pixels, settings.video_decode_timeout_s)


@contextmanager
def map_av_errors(where: str, fmt: str) -> Iterator[None]:
    """PyAV's exceptions → ``MediaError`` (400), the one place they are translated. Errors of
    our own tree pass through; nothing a hostile file triggers in the decoder is a 500."""
    try:
        yield
    except VlmserveError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, IndexError, KeyError) as exc:
        raise corrupt(where, fmt, exc) from None
    except (MemoryError, OverflowError) as exc:
        raise MediaError(
            f"{where} could not be decoded as {fmt}: it needs more memory than this server "
            f"allows ({type(exc).__name__}); send a smaller video",
            code="invalid_video",
        ) from None


def corrupt(where: str, fmt: str, exc: BaseException) -> MediaError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return MediaError(
        f"{where} could not be decoded as {fmt}: the file is truncated or corrupt ({reason}); "
        "send the complete, unmodified video file (MP4 with H.264 is the safest)",
        code="invalid_video",
    )


def prepare_video(file: BinaryIO, num_bytes: int, sizing: VideoSizing, where: str) -> PreparedVideo:
    """Sampled, upright, sized frames of the video in ``file`` (``num_bytes`` long, read from its
    current position); raises errors from ``vlmserve.errors`` only."""
    check_size(num_bytes, sizing.policy, where)
    head = file.read(SNIFF_BYTES)
    file.seek(-len(head), io.SEEK_CUR)
    fmt = sniff_video(head, where)
    deadline = time.monotonic() + sizing.timeout_s
    with map_av_errors(where, fmt), av.open(file, "r", format=_DEMUXERS[fmt]) as container:
        assert isinstance(container, av.container.InputContainer)
        stream = _video_stream(container, where, fmt)
        _check_pixels(stream, sizing.max_pixels, where)
        check_index(stream, num_bytes, where)
        sampler = Sampler(container, stream, Deadline(deadline, sizing.timeout_s, where))
        duration = sampler.duration()
        check_duration(duration, sizing.policy, where)
        segments = plan(duration, sizing.policy, sampler.keyframes)
        shaper = Shaper(stream, sizing.policy.frame_edge)
        shots = sampler.sample(segments, duration, where, shaper)
        return _prepared(shots, shaper, stream.codec_context.name, fmt, duration, num_bytes)


def check_size(num_bytes: int, policy: VideoPolicy, where: str) -> None:
    if num_bytes == 0:
        raise MediaError(f"{where} is empty (0 bytes); send the video file", code="invalid_video")
    if num_bytes > policy.max_bytes:
        raise too_large(where, f"is {_mb(num_bytes)}", policy.max_bytes)


def too_large(where: str, what: str, limit: int) -> MediaError:
    return MediaError(
        f"{where} {what}; a video may be at most {_mb(limit)}. Compress it or cut it into "
        "shorter pieces (e.g. with ffmpeg) and send those",
        code="video_too_large",
    )


def check_duration(duration: float, policy: VideoPolicy, where: str) -> None:
    if duration > policy.max_seconds + 1e-3:  # a header rounding up by a millisecond
        raise MediaError(
            f"{where} is {duration:.1f} s long; this model accepts videos of at most "
            f"{policy.max_seconds:g} s. Cut it into shorter pieces (e.g. with ffmpeg), ask about "
            "each, and combine the answers",
            code="video_too_long",
        )


def check_index(stream: av.VideoStream, num_bytes: int, where: str) -> None:
    """An MP4 indexes every frame's place in the file: one past its end means a cut-off file,
    refused before any decoding (sampling could otherwise miss the missing part)."""
    entries = stream.index_entries or ()
    end = max((e.pos + e.size for e in entries if e.pos >= 0), default=0)
    if end > num_bytes:
        raise MediaError(
            f"{where} is truncated: its index places frames up to byte {end:,}, but the file "
            f"has {num_bytes:,} bytes; send the complete video file",
            code="invalid_video",
        )


def _video_stream(container: av.container.InputContainer, where: str, fmt: str) -> av.VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:  # cover art
            return stream
    if not container.streams:
        raise corrupt(where, fmt, ValueError("no streams found"))
    kinds: list[str] = sorted({s.type for s in container.streams}) or ["no streams"]
    raise MediaError(
        f"{where} has no video stream (it contains: {', '.join(kinds)}); send a video file",
        code="invalid_video",
    )


def _check_pixels(stream: av.VideoStream, max_pixels: int, where: str) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
        raise MediaError(
            f"{where} is {width}x{height} pixels per frame, more than the {max_pixels:,} this "
            "server decodes; send a smaller video",
            code="video_too_large",
        )


def _prepared(
    shots: list[Shot], shaper: Shaper, codec: str, fmt: str, duration: float, num_bytes: int
) -> PreparedVideo:
    frames = tuple(shot.image for shot in shots)
    timestamps = tuple(round(shot.time, 3) for shot in shots)
    identities = [image_identity(frame) for frame in frames]
    return PreparedVideo(
        frames=frames,
        timestamps=timestamps,
        identity=video_identity(identities, timestamps),
        format=fmt,
        codec=codec,
        duration=duration,
        original_size=shaper.upright,
        size=shaper.size,
        rotation=shaper.clockwise,
        num_bytes=num_bytes,
    )


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / (1024 * 1024):.4g} MB"
