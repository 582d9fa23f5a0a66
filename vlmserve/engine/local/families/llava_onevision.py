"""LLaVA-OneVision: AnyRes (a 384 px base view plus the best grid of 384 px views for the
picture's size, with a newline embedding at each row end); 1-D positions; native video."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from vlmserve.engine.local.families.base import Family, get_size

HIGH_VIEWS = 3  # anyres_max_9: features past 3x3 views are pooled down, so larger gains nothing


class LlavaOnevision(Family):
    """Tokens grow with the picture's size (the grid of views it is fitted to), so the budgets
    are edges: low is one view (the base view plus one tile), high 3x3 views."""

    model_types: ClassVar[tuple[str, ...]] = ("llava_onevision",)
    native_video = True
    checkpoints: ClassVar[tuple[str, ...]] = (
        "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    )

    def image_edges(self) -> tuple[int, int] | None:
        view = self._view()
        return view, view * HIGH_VIEWS

    def video_kwargs(self) -> dict[str, Any]:
        return {"do_sample_frames": False}

    def video_frame_tokens(self) -> int | None:
        # a frame's features pooled 2x2: ceil(side / 2)^2 tokens
        side = self._view() // int(self.model.config.vision_config.patch_size)
        return math.ceil(side / 2) ** 2 + 1

    def _view(self) -> int:
        size = self.processor.image_processor.size
        return int(get_size(size, "height") or get_size(size, "shortest_edge") or 384)
