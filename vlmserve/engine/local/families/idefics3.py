"""SmolVLM / Idefics3: tiles of ``max_image_size`` plus a global view."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from PIL import Image

from vlmserve.engine.local.families.base import FRAME_LABEL_TOKENS, Family, edge


class Idefics3(Family):
    """SmolVLM / Idefics3: images are split into ``max_image_size`` tiles plus a global view.

    The stock processor first rescales every image so its longest edge *equals*
    ``size["longest_edge"]`` (upscaling small ones), which would turn every image into the full
    high-detail tile grid. We switch that resize off and only cap images at that edge here, so the
    size ``media`` chose (one tile for detail=low) decides the tile count.
    """

    model_types: ClassVar[tuple[str, ...]] = ("idefics3",)
    checkpoints: ClassVar[tuple[str, ...]] = (
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "HuggingFaceTB/SmolVLM-500M-Instruct",
        "HuggingFaceTB/SmolVLM-Instruct",
    )

    def nest_images(self, images: list[Image.Image]) -> Any:
        return [images]

    def processor_kwargs(self) -> dict[str, Any]:
        return {"do_resize": False}

    def upstream_processor_kwargs(self, sizes: list[tuple[int, int]]) -> dict[str, Any]:
        """vLLM cannot take ``do_resize: false``: it counts an image's tiles with the processor's
        ``get_number_of_image_patches``, which always rescales to ``size["longest_edge"]`` (and
        rounds differently from the processing itself), so placeholders and pixels disagree and
        its engine dies. Instead we send the ``size`` under which every picture gets, in vLLM's
        count and in the processing, the tile grid it gets here without the rescale: its own
        longest edge when that works (the rescale is then a no-op), else the largest that does.
        A request mixing pictures of different grids may have none; the replica then bills its
        own (larger) count, which is what usage reports."""
        if not sizes:
            return {}
        tile = edge(self.processor.image_processor.max_image_size)
        wanted = [_split_grid(w, h, tile) for w, h in sizes]
        own = sorted({max(w, h) for w, h in sizes}, reverse=True)
        for longest in [*own, *range(self._edges()[1], 0, -1)]:
            if all(
                self._keeps_grid(w, h, longest, tile, grid)
                for (w, h), grid in zip(sizes, wanted, strict=True)
            ):
                return {"size": {"longest_edge": longest}}
        return {}

    def _keeps_grid(
        self, width: int, height: int, longest: int, tile: int, grid: tuple[int, int]
    ) -> bool:
        kwargs = {"size": {"longest_edge": longest}}
        counted = self.processor.image_processor.get_number_of_image_patches(height, width, kwargs)
        processed = _split_grid(*_rescaled(width, height, longest), tile)
        return tuple(counted[1:]) == grid and processed == grid

    def fit_image(self, image: Image.Image) -> Image.Image:
        high = self._edges()[1]
        width, height = image.size
        if max(width, height) <= high:
            return image
        scale = high / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.Resampling.LANCZOS)

    def image_edges(self) -> tuple[int, int] | None:
        return self._edges()

    def video_frame_tokens(self) -> int | None:
        # one tile at the low edge: its image tokens, three wrappers, and the frame's label
        return int(getattr(self.processor, "image_seq_len", 64)) + FRAME_LABEL_TOKENS + 3

    def _edges(self) -> tuple[int, int]:
        image_processor = self.processor.image_processor
        low = edge(image_processor.max_image_size)
        high = edge(image_processor.size)
        return low, max(low, high)


def _rescaled(width: int, height: int, longest: int) -> tuple[int, int]:
    """The processor's resize to ``size["longest_edge"]`` (transformers'
    ``_resize_output_size_rescale_to_max_len``: even short side)."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        width, height = int(longest * aspect), longest
        width += width % 2
    return max(width, 1), max(height, 1)


def _split_grid(width: int, height: int, tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles the processor cuts a ``width`` x ``height`` picture into
    (``resize_for_vision_encoder`` then ``split_images``); (0, 0): one global view only."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    if height > tile or width > tile:
        return height // tile, width // tile
    return 0, 0
