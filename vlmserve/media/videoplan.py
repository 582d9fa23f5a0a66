"""Which frames to take from a video: ``n`` equal segments, one frame from each.

Pure arithmetic over the duration, the policy and the container's keyframe times (no decoding),
so the choice is easy to test and the decoder only has to find what was planned. One frame per
segment keeps the sample spread over the whole video whatever the frame rate (variable frame
rates included). With ``keyframe_snap`` a segment that contains a keyframe gives that keyframe
(the one nearest its middle): decoding it needs no other frame, which is what makes sampling a
long video cheap. A segment without one gives the frame on screen at its middle.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from vlmserve.media.types import VideoPolicy


@dataclass(frozen=True, slots=True)
class Segment:
    start: float  # seconds from the start of the video
    end: float
    keyframe: float | None = None  # the keyframe to take instead of the middle frame

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def num_frames(duration: float, policy: VideoPolicy) -> int:
    """``duration * fps`` rounded (at least 1), capped by ``max_frames`` and the token budget."""
    wanted = max(1, math.floor(duration * policy.fps + 0.5))
    return min(wanted, policy.budget_frames)


def plan(duration: float, policy: VideoPolicy, keyframes: tuple[float, ...] = ()) -> list[Segment]:
    """The segments of a ``duration``-second video, in order; ``keyframes`` are sorted times."""
    if duration <= 0:
        return [Segment(0.0, 0.0)]
    n = num_frames(duration, policy)
    length = duration / n
    segments = []
    for i in range(n):
        start, end = i * length, duration if i == n - 1 else (i + 1) * length
        snap = _keyframe_in(keyframes, start, end) if policy.keyframe_snap else None
        segments.append(Segment(start, end, snap))
    return segments


def _keyframe_in(keyframes: tuple[float, ...], start: float, end: float) -> float | None:
    """The keyframe in [start, end) nearest the middle, if any."""
    lo, hi = bisect.bisect_left(keyframes, start), bisect.bisect_left(keyframes, end)
    if lo == hi:
        return None
    middle = (start + end) / 2
    return min(keyframes[lo:hi], key=lambda t: abs(t - middle))
