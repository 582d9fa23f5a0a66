"""Offline dummy models: ``make_dummy_model(path, family, shape)`` writes a complete Hugging Face
model directory with random weights, a tokenizer built offline and the real chat template.

Families (transformers ``model_type``) and their shapes:

- ``idefics3`` (SmolVLM): ``tiny``, ``smolvlm-256m``
- ``qwen2_vl`` (Qwen2-VL): ``tiny``, ``qwen2-vl-2b``
"""

from __future__ import annotations

from vlmserve.dummy.build import FAMILIES, FAMILY_SHAPES, SHAPES, make_dummy_model

__all__ = ["FAMILIES", "FAMILY_SHAPES", "SHAPES", "make_dummy_model"]
