"""Sizing: which size the model gets for a ``detail``, and how to get there cheaply.

The target is the longest side the bound model's processor budgets (``ImagePolicy``: its smallest
budget for ``low``, its largest for ``high``), aspect kept, never enlarged. JPEGs are decoded at
1/2, 1/4 or 1/8 scale in the DCT domain when that is (nearly) enough for the target, which skips
most of the decoding work; a proper filter then brings the pixels to the exact size.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image

from vlmserve.errors import MediaError
from vlmserve.media.types import Detail, ImagePolicy

Size = tuple[int, int]
_DRAFT_SCALES = (8, 4, 2)


def resolve_detail(detail: Detail, policy: ImagePolicy) -> Literal["low", "high"]:
    return policy.default_detail if detail == "auto" else detail


def target_edge(policy: ImagePolicy, detail: Literal["low", "high"]) -> int | None:
    edge = policy.low_longest_edge if detail == "low" else policy.high_longest_edge
    if policy.downscale_oversized:
        edge = policy.max_side if edge is None else min(edge, policy.max_side)
    return edge


def check_side(size: Size, policy: ImagePolicy, where: str) -> None:
    """Longest side over ``max_side`` → 400, unless the server downscales such images."""
    if max(size) > policy.max_side and not policy.downscale_oversized:
        raise MediaError(
            f"{where} is {size[0]}x{size[1]} pixels; the longest side may be at most "
            f"{policy.max_side} px. Downscale the image and send it again",
            code="image_too_large",
        )


def check_pixels(size: Size, max_pixels: int, where: str) -> None:
    """Decompression-bomb guard from the header, before any pixel is decoded."""
    if size[0] * size[1] > max_pixels:
        raise MediaError(
            f"{where} declares {size[0]}x{size[1]} pixels, more than the {max_pixels:,} this "
            "server decodes; send a smaller image",
            code="image_too_large",
        )
    if min(size) < 1:
        raise MediaError(f"{where} has no pixels ({size[0]}x{size[1]})", code="invalid_image")


def fit(size: Size, edge: int | None) -> Size:
    """``size`` scaled so its longest side is ``edge``; never enlarged."""
    width, height = size
    longest = max(width, height)
    if edge is None or longest <= edge:
        return size
    scale = edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def draft_scale(size: Size, final: Size, slack: float) -> int:
    """The largest DCT scale-down (8, 4, 2; else 1) that still gives at least ``final``.

    At 1/2 and 1/4 libjpeg's reduced IDCT is a true low-pass, so a result up to ``slack`` short
    of ``final`` is accepted and enlarged by those few percent (for a 12 MP photo at 2048 px this
    halves the work). At 1/8 only the DC terms survive, a box filter that aliases: never short.
    """
    for scale in _DRAFT_SCALES:
        width, height = -(-size[0] // scale), -(-size[1] // scale)
        allowed = 1.0 if scale == 8 else 1.0 - slack
        if width >= final[0] * allowed and height >= final[1] * allowed:
            return scale
    return 1


def apply_draft(im: Image.Image, final: Size, slack: float) -> None:
    """Ask the JPEG decoder for the reduced scale (before ``load``); no-op for other formats."""
    if im.format not in ("JPEG", "MPO"):
        return
    scale = draft_scale(im.size, final, slack)
    if scale > 1:
        im.draft(im.mode, (im.size[0] // scale, im.size[1] // scale))


def resample(im: Image.Image, size: Size) -> Image.Image:
    """Exact ``size``: Lanczos when shrinking (a box pre-reduction for big factors, as Pillow's
    thumbnail does); bilinear to close a DCT-draft undershoot of a few percent (as good as
    bicubic for a 1.0x scale by PSNR, and half the cost)."""
    if im.size == size:
        return im
    if size[0] >= im.size[0] and size[1] >= im.size[1]:
        return im.resize(size, Image.Resampling.BILINEAR)
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
