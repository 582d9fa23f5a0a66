"""Qwen2.5-VL: Qwen2-VL's budgets and M-RoPE, with video positions on absolute time."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vlmserve.engine.local.families.base import video_metadata
from vlmserve.engine.local.families.qwen2_vl import Qwen2VL
from vlmserve.engine.types import MediaInput


class Qwen25VL(Qwen2VL):
    """Temporal positions of a video advance by ``second_per_grid_ts * tokens_per_second``, so
    the processor needs each video's sampled frame rate (its metadata) to compute them."""

    model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl",)
    checkpoints: ClassVar[tuple[str, ...]] = (
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "Qwen/Qwen2.5-VL-32B-Instruct",
    )

    def video_inputs(self, videos: list[MediaInput]) -> dict[str, Any]:
        return {**self.video_kwargs(), "video_metadata": [video_metadata(v) for v in videos]}

    def rope_index_kwargs(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        seconds = inputs.get("second_per_grid_ts")
        return {} if seconds is None else {"second_per_grid_ts": seconds}
