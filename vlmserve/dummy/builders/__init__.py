"""Dummy builders of the families added after the first two, one module per family; each module
holds its shapes and its ``BUILDER``."""

from __future__ import annotations

from typing import Any

from vlmserve.dummy.builders import (
    gemma3,
    internvl,
    llava_onevision,
    mistral3,
    qwen2_5_vl,
    qwen3_vl,
    smolvlm,
)
from vlmserve.dummy.families import Family

BUILDERS: dict[str, Family] = {
    "smolvlm": smolvlm.BUILDER,
    "qwen2_5_vl": qwen2_5_vl.BUILDER,
    "qwen3_vl": qwen3_vl.BUILDER,
    "internvl": internvl.BUILDER,
    "llava_onevision": llava_onevision.BUILDER,
    "gemma3": gemma3.BUILDER,
    "mistral3": mistral3.BUILDER,
}

SHAPES: dict[str, dict[str, Any]] = {
    "smolvlm": smolvlm.SMOLVLM_SHAPES,
    "qwen2_5_vl": qwen2_5_vl.QWEN2_5_VL_SHAPES,
    "qwen3_vl": qwen3_vl.QWEN3_VL_SHAPES,
    "internvl": internvl.INTERNVL_SHAPES,
    "llava_onevision": llava_onevision.LLAVA_ONEVISION_SHAPES,
    "gemma3": gemma3.GEMMA3_SHAPES,
    "mistral3": mistral3.MISTRAL3_SHAPES,
}
