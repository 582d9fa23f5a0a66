"""Model families, one per module, registered by the config's ``model_type``.

A family holds what differs between models (image layout, processor options, positions, size
budgets); ``Family`` itself is the fallback for model types that no module claims.
"""

from __future__ import annotations

from typing import Any

from vlmserve.engine.local.families.base import Family
from vlmserve.engine.local.families.idefics3 import Idefics3
from vlmserve.engine.local.families.qwen2_vl import Qwen2VL

FAMILIES: tuple[type[Family], ...] = (Idefics3, Qwen2VL)

__all__ = ["FAMILIES", "Family", "Idefics3", "Qwen2VL", "family_for"]


def family_for(model: Any, processor: Any) -> Family:
    model_type = getattr(model.config, "model_type", "")
    for cls in FAMILIES:
        if model_type in cls.model_types:
            return cls(model, processor)
    return Family(model, processor)
