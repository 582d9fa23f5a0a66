"""Model families, one per module, registered by the config's ``model_type``.

A family holds what differs between models (image layout, processor options, positions, size
budgets); ``Family`` itself is the fallback for model types that no module claims.
"""

from __future__ import annotations

from typing import Any

from vlmserve.engine.local.families.base import Family
from vlmserve.engine.local.families.gemma3 import Gemma3
from vlmserve.engine.local.families.idefics3 import Idefics3
from vlmserve.engine.local.families.internvl import InternVL
from vlmserve.engine.local.families.llava_onevision import LlavaOnevision
from vlmserve.engine.local.families.mistral3 import Mistral3
from vlmserve.engine.local.families.qwen2_5_vl import Qwen25VL
from vlmserve.engine.local.families.qwen2_vl import Qwen2VL
from vlmserve.engine.local.families.qwen3_vl import Qwen3VL
from vlmserve.engine.local.families.smolvlm import SmolVLM

FAMILIES: tuple[type[Family], ...] = (
    Idefics3,
    SmolVLM,
    Qwen2VL,
    Qwen25VL,
    Qwen3VL,
    InternVL,
    LlavaOnevision,
    Gemma3,
    Mistral3,
)

__all__ = [
    "FAMILIES",
    "Family",
    "Gemma3",
    "Idefics3",
    "InternVL",
    "LlavaOnevision",
    "Mistral3",
    "Qwen2VL",
    "Qwen3VL",
    "Qwen25VL",
    "SmolVLM",
    "family_class",
    "family_for",
]


def family_class(model_type: str) -> type[Family]:
    """The family registered for ``model_type``, or the generic ``Family``."""
    for cls in FAMILIES:
        if model_type in cls.model_types:
            return cls
    return Family


def family_for(model: Any, processor: Any) -> Family:
    return family_class(getattr(model.config, "model_type", ""))(model, processor)
