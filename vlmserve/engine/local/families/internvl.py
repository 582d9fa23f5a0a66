"""InternVL 3 (``-hf`` releases): 448 px tiles chosen by aspect ratio (plus a thumbnail when there
are several), 256 tokens a tile; 1-D positions; native video as one tile per frame."""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from vlmserve.engine.local.families.base import Family, get_size

HIGH_TILES = 4  # the detail=high edge: a picture this many tiles wide fits the tiling grid


class InternVL(Family):
    """The processor tiles by aspect ratio alone (``max_patches`` tiles, whatever the size), so
    the detail budget is kept here: a picture media sized to the low edge (one tile) is padded
    onto a white square, which the processor then takes as exactly one tile (256 tokens) instead
    of stretching it over a grid of up to 12. Larger pictures keep InternVL's own tiling."""

    model_types: ClassVar[tuple[str, ...]] = ("internvl",)
    native_video = True
    checkpoints: ClassVar[tuple[str, ...]] = (
        "OpenGVLab/InternVL3-1B-hf",
        "OpenGVLab/InternVL3-2B-hf",
        "OpenGVLab/InternVL3-8B-hf",
    )

    def fit_image(self, image: Image.Image) -> Image.Image:
        tile = self._tile()
        width, height = image.size
        if max(width, height) > tile or width == height:
            return image
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image.convert("RGB"), ((side - width) // 2, (side - height) // 2))
        return canvas

    def image_edges(self) -> tuple[int, int] | None:
        tile = self._tile()
        return tile, tile * HIGH_TILES

    def video_kwargs(self) -> dict[str, Any]:
        return {"do_sample_frames": False}

    def video_frame_tokens(self) -> int | None:
        # "FrameN: <img>" + a tile's tokens + "</img>" and the line break
        return int(self.processor.image_seq_length) + 6

    def video_tokens(self, num_frames: int) -> int:
        """Tokens a video of ``num_frames`` expands to that the processor marks as image tokens
        (each frame's ``<img>``, its tile's tokens, ``</img>``): billed as video tokens."""
        return num_frames * (int(self.processor.image_seq_length) + 2)

    def _tile(self) -> int:
        size = self.processor.image_processor.size
        return int(get_size(size, "height") or get_size(size, "longest_edge") or 448)
