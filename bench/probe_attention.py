"""Decode attention on the CPU: one query per row against the cache, in bfloat16 as transformers
runs it and upcast to float32 as the direct decode step does (``decode_step._attention``), at
SmolVLM-256M's heads (9 query, 3 KV, 64 wide). Microseconds per call, medians. Run by hand:

    flock -x /tmp/bench.lock .venv/bin/python bench/probe_attention.py
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import median_seconds

from vlmserve.engine.local.decode_step import _attention

HEADS, KV_HEADS, WIDTH = 9, 3, 64


def timed(call: Callable[[], object]) -> float:
    return median_seconds(call, repeats=200, warmup=5) * 1e6  # microseconds


def row(rows: int, keys: int) -> dict[str, float]:
    q = torch.randn(rows, HEADS, 1, WIDTH)
    k, v = torch.randn(2, rows, KV_HEADS, keys, WIDTH)
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    scale = WIDTH**-0.5

    def sdpa(*qkv: torch.Tensor) -> torch.Tensor:
        return functional.scaled_dot_product_attention(*qkv, scale=scale, enable_gqa=True)

    with torch.inference_mode():
        return {
            "bf16 sdpa": timed(lambda: sdpa(q16, k16, v16)),
            "bf16 upcast (engine)": timed(lambda: _attention(q16, k16, v16, None, scale)),
            "float32 sdpa": timed(lambda: sdpa(q, k, v)),
        }


def main() -> None:
    torch.manual_seed(0)
    for rows in (1, 8):
        for keys in (180, 1200):
            text = ", ".join(f"{name} {us:.0f}" for name, us in row(rows, keys).items())
            print(f"{rows} rows, {keys} keys: {text} us", flush=True)


if __name__ == "__main__":
    main()
