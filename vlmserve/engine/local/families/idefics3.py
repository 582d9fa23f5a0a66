"""SmolVLM / Idefics3: tiles of ``max_image_size`` plus a global view."""

from __future__ import annotations

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
