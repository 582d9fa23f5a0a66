"""``Sampler``: the frames of one video stream at planned times, by seeking rather than decoding
every frame (``videoplan`` plans the times; ``video`` drives both).

A keyframe target is one seek and one decoded frame. A middle target is a seek to the keyframe
before it (known from the container's index) and decoding forward, or decoding on when that
keyframe was already passed; on the way, frames no other frame refers to are skipped until just
before the target, so the frame on screen there is exact. A deadline bounds every packet.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import av
import av.container
from PIL import Image

from vlmserve.errors import MediaError
from vlmserve.media.videoframe import VideoFrame
from vlmserve.media.videoplan import Segment

_EPS: Final = 1e-3  # seconds: timestamps closer than this are the same instant
_NO_INDEX_SEEK_S: Final = 2.0  # without a keyframe index, decode on for targets this close


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


def _last_at_or_before(times: tuple[float, ...], at: float) -> float | None:
    i = bisect.bisect_right(times, at + _EPS)
    return times[i - 1] if i else None
