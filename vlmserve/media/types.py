"""The media seam: what ``serving`` hands to ``media`` and what it gets back.

``media`` never learns model names: ``serving`` builds an ``ImagePolicy`` from the catalogue entry
(limits) and the bound engine (the processor's size budgets) and passes it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL.Image import Image

Detail = Literal["low", "high", "auto"]


@dataclass(frozen=True, slots=True)
class MediaRef:
    """One image or video part of a request.

    ``position`` names the part for error messages, e.g. ``messages[2].content[1]``; ``ordinal`` is
    its 1-based number among the request's images ("image 3").
    """

    url: str
    kind: Literal["image", "video"]
    position: str
    ordinal: int
    detail: Detail = "auto"


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """Limits and sizing for the images of one request (all from the catalogue and the engine)."""

    max_images: int = 50
    max_side: int = 4096  # longest side of the original, in pixels
    max_total_bytes: int = 20 * 1024 * 1024  # all images of the request, decoded bytes
    default_detail: Literal["low", "high"] = "low"
    low_longest_edge: int | None = None  # target longest side for detail=low (None: leave as is)
    high_longest_edge: int | None = None  # target longest side for detail=high
    downscale_oversized: bool = False  # settings: downscale images over max_side instead of 400


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """Model-ready pixels: RGB, oriented, metadata dropped, sized for the policy."""

    image: Image
    identity: str  # hex content hash of the canonical pixels
    format: str  # "JPEG", "PNG", "GIF", "WEBP"
    original_size: tuple[int, int]  # (width, height) after orientation
    size: tuple[int, int]  # (width, height) handed to the model
    num_bytes: int  # encoded bytes received
    metadata_removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VideoPolicy:
    """Limits and sampling for the videos of one request (catalogue, engine and settings).

    A video is cut into ``n`` equal segments and one frame is taken from each, where ``n`` is the
    smallest of: its duration times ``fps`` (at least 1), ``max_frames``, and ``max_tokens //
    frame_tokens`` when the engine estimates what a frame costs.
    """

    max_videos: int = 8  # per request, history included
    max_bytes: int = 128 * 1024 * 1024  # one video file
    max_seconds: float = 300.0
    fps: float = 1.0
    max_frames: int = 32
    max_tokens: int | None = None  # per video
    frame_tokens: int | None = None  # the engine's estimate for one frame at ``frame_edge``
    frame_edge: int | None = None  # longest side of a frame handed to the model (None: as is)
    keyframe_snap: bool = True  # a segment's keyframe rather than its middle frame, if it has one

    @property
    def budget_frames(self) -> int:
        """The most frames ``max_frames`` and the token budget allow (at least 1)."""
        if self.max_tokens is None or not self.frame_tokens:
            return self.max_frames
        return max(1, min(self.max_frames, self.max_tokens // self.frame_tokens))


@dataclass(frozen=True, slots=True)
class PreparedVideo:
    """Sampled, model-ready frames: RGB, rotated upright, metadata dropped, sized for the policy."""

    frames: tuple[Image, ...]
    timestamps: tuple[float, ...]  # seconds from the start of the video, one per frame
    identity: str  # hex hash of the frames' identities and timestamps
    format: str  # "MP4", "MOV", "MKV", "WEBM"
    codec: str  # the video stream's codec, e.g. "h264"
    duration: float  # seconds
    original_size: tuple[int, int]  # (width, height) as displayed (rotation applied)
    size: tuple[int, int]  # (width, height) of every frame handed to the model
    rotation: int  # degrees clockwise that were applied to display the frames upright
    num_bytes: int  # encoded bytes of the file

    @property
    def fps(self) -> float:
        """Sampled frames per second of video."""
        return len(self.frames) / self.duration if self.duration > 0 else float(len(self.frames))
