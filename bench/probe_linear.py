"""One linear layer, MKL (``F.linear``) against oneDNN over a prepacked weight, at decode and
prefill row counts. Run by hand, alone (milliseconds per call, medians):

    flock -x /tmp/bench.lock .venv/bin/python bench/probe_linear.py

Shapes: a Qwen2.5-VL-3B MLP (2048 -> 11008 and back), a SmolVLM-256M one (576 -> 1536) and a
Qwen2-0.5B one (896 -> 4864 and back: LLaVA-OneVision-0.5B, whose prefill has ~1,600 rows);
oneDNN packed without a batch-size hint (what the engine does), and with hints of 1 and 512 rows;
SmolVLM-256M's output head (576 -> 49,280). float32, and bfloat16 where oneDNN computes it
natively (the engine packs both).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from benchlib import median_seconds
from torch.nn import functional

from vlmserve.engine.local.packed_linear import can_pack

SHAPES = ((2048, 11008), (11008, 2048), (576, 1536), (896, 4864), (4864, 896))
HEAD = (576, 49280)  # SmolVLM-256M's output head, the biggest single read of its decode step
ROWS = (1, 8, 488, 1597)


def timed(call: Callable[[], object], repeats: int) -> float:
    return median_seconds(call, repeats) * 1000  # milliseconds


def main() -> None:
    torch.manual_seed(0)
    linear = torch.ops.mkldnn._linear_pointwise
    dtypes = [torch.float32]
    if can_pack(torch.device("cpu"), torch.bfloat16):  # where the engine packs bf16 too
        dtypes.append(torch.bfloat16)
    for dtype, (k, n) in ((d, shape) for d in dtypes for shape in (*SHAPES, HEAD)):
        weight = torch.randn(n, k).to(dtype)
        packs = {"packed": torch.ops.mkldnn._reorder_linear_weight(weight)}
        for hint in (1, 512):
            packs[f"packed, hint {hint}"] = torch.ops.mkldnn._reorder_linear_weight(weight, hint)
        for m in ROWS:
            x = torch.randn(m, k).to(dtype)
            repeats = 30 if m < 100 else 8
            row = {"mkl": timed(lambda: functional.linear(x, weight), repeats)}  # noqa: B023
            for name, packed in packs.items():
                row[name] = timed(
                    lambda p=packed: linear(x, p, None, "none", [], ""),  # noqa: B023
                    repeats,
                )
            cells = ", ".join(f"{name} {ms:.2f}" for name, ms in row.items())
            name = str(dtype).removeprefix("torch.")
            print(f"{name} {k} -> {n}, {m} rows: {cells} ms", flush=True)


if __name__ == "__main__":
    main()
