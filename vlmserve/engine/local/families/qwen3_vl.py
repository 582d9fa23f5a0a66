"""Qwen3-VL: interleaved M-RoPE (the model's own ``get_rope_index``), 32 px merged patches, and
videos as timestamped frame groups (``<1.0 seconds><|vision_start|>...``) from frame metadata.

DeepStack adds vision features to the first decoder layers' hidden states, so a prompt with
media cannot be rebuilt from ``inputs_embeds`` alone: the engine's embedder prefills such prompts
the model's own way (the prefix cache still serves text-only prompts)."""

from __future__ import annotations

from typing import Any, ClassVar

from vlmserve.engine.local.families.base import video_metadata
from vlmserve.engine.local.families.qwen2_vl import Qwen2VL
from vlmserve.engine.types import MediaInput


class Qwen3VL(Qwen2VL):
    model_types: ClassVar[tuple[str, ...]] = ("qwen3_vl",)
    default_system_prompt = ""  # the template adds none; its own tools section is Hermes
    checkpoints: ClassVar[tuple[str, ...]] = (
        "Qwen/Qwen3-VL-2B-Instruct",
        "Qwen/Qwen3-VL-4B-Instruct",
        "Qwen/Qwen3-VL-8B-Instruct",
    )

    def video_inputs(self, videos: list[MediaInput]) -> dict[str, Any]:
        return {**self.video_kwargs(), "video_metadata": [video_metadata(v) for v in videos]}
