"""Sampling one video: container check, PyAV decoding, frames picked by seeking, never by decoding
the whole file (runs on the intake's thread pool, never on the event loop).

The video is cut into ``n`` equal segments (``videoplan.plan``) and one frame is taken from each:
the segment's keyframe when it has one and ``keyframe_snap`` is on (a seek lands on it and one
frame is decoded), otherwise the frame shown at the segment's middle (a seek to the keyframe
before it, then decoding forward). Consecutive targets inside one GOP are reached by decoding on
instead of seeking again. Each frame is scaled by swscale straight to its final size, turned
upright (display matrix, else a ``rotate`` tag) and hashed like an image.

Time and memory are bounded: a pixel cap from the header, a deadline checked at every frame and
packet, and only the sampled frames (at model size) are kept. Every PyAV error is translated by
``map_av_errors``; bad bytes are a 400, never a 500.
"""

from __future__ import annotations

import bisect
import io
import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Final, cast

import av
import av.container
import av.video.frame
from av.sidedata.sidedata import SideData
from av.sidedata.sidedata import Type as SideDataType
from PIL import Image

from vlmserve.errors import MediaError, VlmserveError
from vlmserve.media import resize
from vlmserve.media.identity import image_identity, video_identity
from vlmserve.media.sniff import SNIFF_BYTES, sniff_video
from vlmserve.media.types import PreparedVideo, VideoPolicy
from vlmserve.media.videoplan import Segment, plan
from vlmserve.settings import MediaSettings

_DEMUXERS: Final = {"MP4": "mov", "MOV": "mov", "MKV": "matroska", "WEBM": "matroska"}
_EPS: Final = 1e-3  # seconds: timestamps closer than this are the same instant
_NO_INDEX_SEEK_S: Final = 2.0  # without a keyframe index, decode on for targets this close
_SWAPS_SIDES: Final = frozenset(
    {
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
    }
)
_TAG_ROTATIONS: Final = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
_FLIPS: Final = {
    (True, True): Image.Transpose.ROTATE_180,
    (True, False): Image.Transpose.FLIP_LEFT_RIGHT,
    (False, True): Image.Transpose.FLIP_TOP_BOTTOM,
    (False, False): None,
}
VideoFrame = av.video.frame.VideoFrame


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
    if duration > policy.max_seconds + _EPS:
        raise MediaError(
            f"{where} is {duration:.1f} s long; this model accepts videos of at most "
            f"{policy.max_seconds:g} s. Cut it into shorter pieces (e.g. with ffmpeg), ask about "
            "each, and combine the answers",
            code="video_too_long",
        )


class Deadline:
    def __init__(self, at: float, timeout_s: float, where: str) -> None:
        self._at, self._timeout_s, self._where = at, timeout_s, where

    def check(self) -> None:
        if time.monotonic() > self._at:
            raise MediaError(
                f"{self._where} took longer than {self._timeout_s:g} s to decode; send a shorter "
                "or smaller video, or re-encode it with more keyframes (e.g. one per second)",
                code="video_decode_timeout",
            )


@dataclass(frozen=True, slots=True)
class Picked:
    frame: VideoFrame
    time: float  # seconds from the start of the video


@dataclass(frozen=True, slots=True)
class Shot:
    image: Image.Image  # model-ready
    time: float


class Shaper:
    """Turns each picked frame into its model-ready picture at once, so no decoded full-size frame
    is kept: upright, scaled to the size the first frame decides for all of them (a stream whose
    resolution changes midway still gives frames of one size)."""

    def __init__(self, stream: av.VideoStream, edge: int | None) -> None:
        self._stream, self._edge = stream, edge
        self.clockwise, self.transpose = 0, cast(Image.Transpose | None, None)
        self.upright = self.size = self._coded = (0, 0)

    def __call__(self, frame: VideoFrame) -> Image.Image:
        if self._coded == (0, 0):
            self._configure(frame)
        return _to_image(frame, self._coded, self.transpose)

    def _configure(self, frame: VideoFrame) -> None:
        self.clockwise, self.transpose = orientation(frame, self._stream)
        display = _display_size(frame.width, frame.height, self._stream.sample_aspect_ratio)
        swap = self.transpose in _SWAPS_SIDES
        self.upright = (display[1], display[0]) if swap else display
        self.size = resize.fit(self.upright, self._edge)
        self._coded = (self.size[1], self.size[0]) if swap else self.size


class Sampler:
    """Frames of one video stream at chosen times, seeking only when decoding on would cost more.

    Keeps one decoded frame of look-ahead (``_ahead``): deciding which frame is on screen at
    ``t`` needs the first frame after ``t``, and that frame may be the answer for the next target.
    ``_current`` is the last frame passed, the answer when the next target falls before
    ``_ahead``.
    """

    def __init__(
        self, container: av.container.InputContainer, stream: av.VideoStream, deadline: Deadline
    ) -> None:
        self._container, self._stream, self._deadline = container, stream, deadline
        self._tb = stream.time_base or Fraction(1, 90000)
        self._start = float(stream.start_time * self._tb) if stream.start_time is not None else 0.0
        self._decoded: Iterator[VideoFrame] | None = None
        self._ahead: Picked | None = None
        self._current: Picked | None = None
        self._position = -math.inf  # time of the last frame decoded
        self._sequential = False  # a seek went backwards: decode straight through from now on
        self._ended_at: float | None = None  # where the packets ended, once the file did
        # Decoding forward to a target, frames no other frame refers to (most B-frames) are
        # skipped until ``_margin`` before it: half the decoding work on long GOPs, and every
        # frame near the target is still decoded, so the frame on screen there is exact.
        self._skip_until, self._skipping = -math.inf, False
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        self._margin = max(0.5, 4 / rate) if rate > 0 else 1.0
        self.num_decoded = 0
        self.num_seeks = 0
        stream.thread_type = "SLICE"  # frame threads would decode frames ahead that we skip
        self.keyframes = self._keyframes()

    def _keyframes(self) -> tuple[float, ...]:
        """Keyframe times from the container's index (MP4 sample tables, Matroska cues); () when
        the file has none. MP4 indexes decoding times, seeks take presentation times: the first
        frame (decoded here, it is the first segment's answer anyway) gives the offset."""
        entries = self._stream.index_entries
        stamps = sorted({e.timestamp for e in entries if e.is_keyframe}) if entries else []
        self._decoded = self._decode()
        first = self._ahead = next(self._frames(), None)
        if not stamps or first is None or first.frame.pts is None:
            return ()
        offset = first.frame.pts - stamps[0] if first.frame.key_frame else 0
        return tuple(max(0.0, float((t + offset) * self._tb) - self._start) for t in stamps)

    def duration(self) -> float:
        """From the header (stream, else container); a file that states none (a browser's WebM
        recording) is demuxed once, without decoding, to find its last timestamp."""
        stream, container = self._stream, self._container
        if stream.duration and stream.duration > 0:
            return float(stream.duration * self._tb)
        if container.duration and container.duration > 0:
            return container.duration / av.time_base - max(0.0, self._start)
        return self._scan_duration()

    def sample(
        self,
        segments: list[Segment],
        duration: float,
        where: str,
        shape: Callable[[VideoFrame], Image.Image],
    ) -> list[Shot]:
        """One frame per segment, each ``shape``d as soon as it is picked."""
        picked: list[Shot] = []
        for segment in segments:
            if segment.keyframe is not None:
                found = self._at_keyframe(segment.keyframe)
            else:
                found = self._shown_at(segment.middle)
            if found is not None and (not picked or found.time > picked[-1].time + _EPS):
                picked.append(Shot(shape(found.frame), found.time))  # a still stretch: once
        if not picked:
            raise MediaError(
                f"{where} has no frame that decodes; send a complete video file",
                code="invalid_video",
            )
        if self._ended_at is not None:
            _check_complete(self._ended_at, duration, where)
        return picked

    def _at_keyframe(self, at: float) -> Picked | None:
        """The keyframe at ``at`` (the first frame from there on): one seek, one frame."""
        self._skip_until = -math.inf
        if self._needs_seek(at):
            self._seek(at)
        for picked in self._frames():
            self._current = picked
            if picked.time >= at - _EPS:
                return picked
        return None

    def _shown_at(self, at: float) -> Picked | None:
        """The frame on screen at ``at``: the last one starting at or before it (else the first
        one after it, for a target before the first frame)."""
        self._skip_until = at - self._margin
        if self._needs_seek(at):
            self._seek(at)
        before = self._current
        for picked in self._frames():
            if picked.time > at + _EPS:
                self._ahead = picked
                return before or picked
            before = self._current = picked
        return before

    def _needs_seek(self, at: float) -> bool:
        if self._decoded is None:
            return True
        if self._sequential or (self._ahead is not None and self._ahead.time > at + _EPS):
            return False
        keyframe = _last_at_or_before(self.keyframes, at)
        if keyframe is None:  # no index: seek only past what a GOP usually spans
            return not self.keyframes and at > self._position + _NO_INDEX_SEEK_S
        return keyframe > self._position + _EPS

    def _seek(self, at: float) -> None:
        before = self._position
        offset = max(0, round((at + self._start) / self._tb))  # exact for an index time
        self._container.seek(offset, stream=self._stream, backward=True)
        self.num_seeks += 1
        self._decoded = self._decode()
        self._ahead = self._current = None
        first = next(self._frames(), None)
        self._ahead = first
        if first is not None and first.time < before - _EPS:
            self._sequential = True  # the seek could only go back to a keyframe we had passed

    def _frames(self) -> Iterator[Picked]:
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            yield ahead
        assert self._decoded is not None
        for frame in self._decoded:
            self.num_decoded += 1
            seconds = self._time(frame)
            self._position = seconds
            yield Picked(frame, seconds)

    def _decode(self) -> Iterator[VideoFrame]:
        """Packet by packet, so the deadline also bounds packets that give no frame; notes where
        the packets end when the file does."""
        end = -math.inf
        for packet in self._container.demux(self._stream):
            self._deadline.check()
            if packet.pts is not None:
                seconds = float(packet.pts * self._tb) - self._start
                end = max(end, seconds + float((packet.duration or 0) * self._tb))
                self._skip(seconds < self._skip_until)
            yield from packet.decode()
        self._ended_at = end

    def _skip(self, skipping: bool) -> None:
        if skipping != self._skipping:
            self._stream.codec_context.skip_frame = "NONREF" if skipping else "DEFAULT"
            self._skipping = skipping

    def _time(self, frame: VideoFrame) -> float:
        if frame.pts is None:  # no timestamp: just after the previous frame
            return self._position + _EPS if math.isfinite(self._position) else 0.0
        return float(frame.pts * self._tb) - self._start

    def _scan_duration(self) -> float:
        end = 0.0
        for packet in self._container.demux(self._stream):
            self._deadline.check()
            if packet.pts is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * self._tb))
        self._container.seek(0, stream=self._stream, backward=True)
        return max(0.0, end - self._start)


def _check_complete(ended_at: float, duration: float, where: str) -> None:
    """A file whose packets stop well before the duration its header states was cut off where
    the demuxer cannot tell (Matroska without cues); sampling only its beginning would describe
    a video nobody sent."""
    if ended_at < duration - max(1.0, 0.05 * duration):
        shown = f"after {ended_at:.1f} s" if ended_at >= 0 else "before its first frame"
        raise MediaError(
            f"{where} ends {shown}, but its header says {duration:.1f} s: the file is truncated; "
            "send the complete video file",
            code="invalid_video",
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


def _last_at_or_before(times: tuple[float, ...], at: float) -> float | None:
    i = bisect.bisect_right(times, at + _EPS)
    return times[i - 1] if i else None


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


def _display_size(width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """Anamorphic video: pixels are not square, the display width is ``width * sar``."""
    if not sar or sar <= 0 or sar == 1:
        return width, height
    return max(1, round(width * sar)), height


def _to_image(
    frame: VideoFrame, size: tuple[int, int], transpose: Image.Transpose | None
) -> Image.Image:
    """swscale scales (area filter: a proper low-pass for shrinking) and converts to RGB in one
    pass, so the full-size RGB picture is never built."""
    rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    image = cast(Image.Image, rgb.to_image())  # type: ignore[no-untyped-call]
    if transpose is not None:
        image = image.transpose(transpose)
    image.info = {}
    return image


def orientation(frame: VideoFrame, stream: av.VideoStream) -> tuple[int, Image.Transpose | None]:
    """(clockwise degrees, the Pillow transpose that shows the frame upright), as ffmpeg's
    autorotate reads them: the display matrix (side data), else a legacy ``rotate`` tag."""
    for data in cast(Iterable[SideData], frame.side_data):
        matrix = bytes(data)
        if data.type == SideDataType.DISPLAYMATRIX and len(matrix) >= 36:
            return from_display_matrix(struct.unpack("=9i", matrix[:36]))
    try:
        degrees = round(float(stream.metadata.get("rotate", "0"))) % 360
    except ValueError:
        return 0, None
    return degrees, _TAG_ROTATIONS.get(degrees)


def from_display_matrix(m: tuple[int, ...]) -> tuple[int, Image.Transpose | None]:
    """fftools' ``get_rotation`` and autorotate filters, for a 3x3 display matrix: its clockwise
    angle and the flips its signs imply. Angles that are not multiples of 90 are left alone."""
    scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not scale_x or not scale_y:
        return 0, None
    theta = round(math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # transpose=cclock_flip or clock
        return 90, Image.Transpose.TRANSPOSE if m[3] > 0 else Image.Transpose.ROTATE_270
    if abs(theta - 270) < 1:  # transpose=clock_flip or cclock
        return 270, Image.Transpose.TRANSVERSE if m[3] < 0 else Image.Transpose.ROTATE_90
    if abs(theta - 180) < 1:  # hflip if m[0] < 0, then vflip if m[4] < 0
        return 180, _FLIPS[(m[0] < 0, m[4] < 0)]
    if abs(theta) < 1 and m[4] < 0:
        return 0, Image.Transpose.FLIP_TOP_BOTTOM
    return 0, None


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / (1024 * 1024):.4g} MB"
