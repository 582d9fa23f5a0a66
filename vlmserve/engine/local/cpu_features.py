"""What this machine's CPU computes natively: asked by the dtype choice (``loader``) and by the
weight packing (``packed_linear``), so both follow one answer."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


@cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls are then ~2x fp32; without them bf16 is emulated (slow)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = set(text.split())
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check()) if check is not None else False
