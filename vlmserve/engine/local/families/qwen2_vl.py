"""Qwen2-VL: any resolution within [min_pixels, max_pixels], 3-D (M-RoPE) positions."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from vlmserve.engine.local.families.base import Family, get_size


class Qwen2VL(Family):
    """Qwen2-VL: any resolution within [min_pixels, max_pixels], 3-D (M-RoPE) positions.

    Budgets: high is the longest edge of a square holding ``max_pixels``; low is 448 px (16x16
    merged patches, 256 tokens, close to the 512 px "low detail" of the hosted APIs), clamped into
    what ``min_pixels``/``max_pixels`` allow. Both are multiples of patch_size * merge_size.
    """

    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl",)
    uses_mm_token_type_ids = True
    native_video = True
    default_system_prompt = "You are a helpful assistant."
    checkpoints: ClassVar[tuple[str, ...]] = (
        "Qwen/Qwen2-VL-2B-Instruct",
        "Qwen/Qwen2-VL-7B-Instruct",
    )

    def video_kwargs(self) -> dict[str, Any]:
        return {"do_sample_frames": False}

    def video_frame_tokens(self) -> int | None:
        """Pixels of a square frame at the low edge, within the video processor's bounds, in
        merged patches; two frames share one temporal patch."""
        edges = self.image_edges()
        video = getattr(self.processor, "video_processor", None)
        if edges is None or video is None:
            return None
        factor = video.patch_size * video.merge_size
        pixels = edges[0] * edges[0]
        low = get_size(video.size, "shortest_edge") or 0
        high = get_size(video.size, "longest_edge") or pixels
        pixels = min(max(pixels, int(low)), int(high))
        return max(1, math.ceil(pixels / (factor * factor) / video.temporal_patch_size))

    def image_edges(self) -> tuple[int, int] | None:
        image_processor = self.processor.image_processor
        factor = image_processor.patch_size * image_processor.merge_size
        size = image_processor.size
        min_pixels = (
            getattr(size, "shortest_edge", None) or get_size(size, "shortest_edge") or 56 * 56
        )
        max_pixels = (
            getattr(size, "longest_edge", None) or get_size(size, "longest_edge") or 1003520
        )
        high = max(factor, math.isqrt(int(max_pixels)) // factor * factor)
        floor = math.ceil(math.sqrt(int(min_pixels)) / factor) * factor
        low = min(high, max(floor, 448))
        return low, high

    def prefill_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        input_ids = inputs["input_ids"]
        grid = inputs.get("image_grid_thw")
        video_grid = inputs.get("video_grid_thw")
        types = inputs.get("mm_token_type_ids")
        if (grid is None and video_grid is None) or types is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            return positions.view(1, 1, -1).expand(3, 1, -1), 0
        positions, deltas = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=types,
            image_grid_thw=grid,
            video_grid_thw=video_grid,
            **self.rope_index_kwargs(inputs),
        )
        return positions, int(deltas.view(-1)[0].item())

    def rope_index_kwargs(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Further inputs the model's own ``get_rope_index`` reads (Qwen2.5-VL: video timing)."""
        return {}

    def decode_positions(self, positions: torch.Tensor) -> torch.Tensor:
        # a text token after the prompt: the three M-RoPE axes share its position
        return positions.view(1, -1, 1).expand(3, -1, 1)
