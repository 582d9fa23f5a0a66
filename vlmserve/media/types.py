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
