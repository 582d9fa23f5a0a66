"""The CPU pipeline for one image (runs on the intake's thread pool, never on the event loop).

bytes → sniff → header checks (format, animation, side, bomb) → DCT-draft decode → working mode →
resize → EXIF orientation → sRGB → flatten transparency → RGB without metadata → identity.
Resizing comes before the colour work so that lcms and compositing touch only the final pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageFile

from vlmserve.media import image as img
from vlmserve.media import resize
from vlmserve.media.identity import image_identity
from vlmserve.media.types import Detail, ImagePolicy, PreparedImage
from vlmserve.settings import MediaSettings


@dataclass(frozen=True, slots=True)
class Sizing:
    """Everything besides the bytes that decides the prepared image (part of the cache key)."""

    detail: Literal["low", "high"]
    edge: int | None
    policy: ImagePolicy
    max_pixels: int
    background: tuple[int, int, int]
    draft_slack: float


def sizing_for(policy: ImagePolicy, detail: Detail, settings: MediaSettings) -> Sizing:
    resolved = resize.resolve_detail(detail, policy)
    return Sizing(
        detail=resolved,
        edge=resize.target_edge(policy, resolved),
        policy=policy,
        max_pixels=settings.max_pixels,
        background=settings.background_rgb,
        draft_slack=settings.jpeg_draft_slack,
    )


def prepare_image(data: bytes, sizing: Sizing, where: str) -> PreparedImage:
    """Validated, sanitized, sized pixels for ``data``; raises errors from ``vlmserve.errors``."""
    fmt = img.check_supported(data[:64], where)
    with img.pillow_errors(where, fmt):
        return _prepare(data, fmt, sizing, where)


def _prepare(data: bytes, fmt: str, sizing: Sizing, where: str) -> PreparedImage:
    im = img.open_image(data, fmt, where)
    original = im.size
    resize.check_pixels(im.size, sizing.max_pixels, where)
    resize.check_side(im.size, sizing.policy, where)
    img.check_still(im, fmt, where)
    orient = img.orientation(im)
    removed = img.metadata_keys(im)
    icc = im.info.get("icc_profile")
    final = resize.fit(im.size, sizing.edge)
    resize.apply_draft(im, final, sizing.draft_slack)
    img.load_image(im, fmt, where)
    pixels = resize.resample(img.to_working_mode(im), final)
    pixels = img.transpose(pixels, orient)
    pixels = img.flatten(
        img.to_srgb(pixels, icc if isinstance(icc, bytes) else None), sizing.background
    )
    pixels = _stripped(pixels)
    return PreparedImage(
        image=pixels,
        identity=image_identity(pixels),
        format=fmt,
        original_size=_rotate(original, orient),
        size=pixels.size,
        num_bytes=len(data),
        metadata_removed=removed,
    )


def _rotate(size: tuple[int, int], orient: int) -> tuple[int, int]:
    return (size[1], size[0]) if orient >= 5 else size


def _stripped(im: Image.Image) -> Image.Image:
    """A fresh image that shares nothing with the file: no info, no EXIF, no palette."""
    if im.mode != "RGB":
        im = im.convert("RGB")
    elif isinstance(im, ImageFile.ImageFile):  # the opened file itself: detach it from the bytes
        im = im.copy()
    im.info = {}
    im.readonly = 0
    return im


def inspect_image(
    data: bytes,
    policy: ImagePolicy,
    detail: Detail = "auto",
    settings: MediaSettings | None = None,
) -> tuple[PreparedImage, dict[str, object]]:
    """For ``vlmserve inspect-image``: the prepared image and a JSON-able report of what was done
    (the CLI adds ``tokens`` from the engine)."""
    sizing = sizing_for(policy, detail, settings or MediaSettings())
    prepared = prepare_image(data, sizing, "the image")
    report: dict[str, object] = {
        "format": prepared.format,
        "original_size": list(prepared.original_size),
        "size": list(prepared.size),
        "detail": sizing.detail,
        "identity": prepared.identity,
        "metadata_removed": list(prepared.metadata_removed),
        "num_bytes": prepared.num_bytes,
    }
    return prepared, report
