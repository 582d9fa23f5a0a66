"""Per-token decode time of one family: the engine, ``model.generate`` and a bare engine-style
forward loop, alternating on the engine's step thread (one OpenMP team). Run by hand, alone:

    flock -x /tmp/bench.lock .venv/bin/python bench/probe_decode_step.py DIR [--tokens 24]

``DIR``: a dummy model directory (``bench_families.py`` keeps them under
/tmp/vlmserve-bench-models). Prints ms per token per round: the engine's (from its events), the
median gap between two of ``generate``'s logits-processor calls (stock ``nn.Linear`` layers),
and a loop of bare forwards with the engine's positions and cache (what the decode step costs
without the engine around it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_families import engine_run, prompt  # noqa: E402
from benchlib import stock_linears  # noqa: E402
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList  # noqa: E402

from vlmserve.catalog.spec import EngineBinding  # noqa: E402
from vlmserve.engine.local import LocalEngine  # noqa: E402
from vlmserve.engine.types import Prompt  # noqa: E402
from vlmserve.settings import EngineSettings  # noqa: E402


class Stamp(LogitsProcessor):
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def baseline(engine: LocalEngine, p: Prompt, tokens: int) -> tuple[float, float]:
    loaded, core, prep = engine._loaded, engine._core, engine._preparer
    assert loaded is not None and core is not None and prep is not None

    def run() -> tuple[float, float]:
        inputs: dict[str, Any] = {
            k: (v.to(loaded.dtype) if v.is_floating_point() else v)
            for k, v in prep.prepare(p).model_inputs.items()
        }
        stamp = Stamp()
        with torch.inference_mode():
            with stock_linears(loaded.model, core.runner):
                loaded.model.generate(
                    **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                    logits_processor=LogitsProcessorList([stamp]),
                )  # fmt: skip
            cache = DynamicCache(config=loaded.model.config)
            out = loaded.model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            deltas = getattr(getattr(loaded.model, "model", None), "rope_deltas", None)
            position = int(inputs["input_ids"].shape[1])
            position += int(deltas.view(-1)[0]) if deltas is not None else 0
            bare = []
            for step in range(tokens - 1):
                ids = prep.family.decode_positions(torch.tensor([position + step]))
                start = time.perf_counter()
                out = loaded.model(
                    input_ids=token, position_ids=ids, past_key_values=cache, use_cache=True,
                    logits_to_keep=1,
                )  # fmt: skip
                token = out.logits[:, -1].float().argmax(-1, keepdim=True)
                bare.append(time.perf_counter() - start)
        gaps = [b - a for a, b in zip(stamp.times, stamp.times[1:], strict=False)]
        return statistics.median(gaps), statistics.median(bare)

    result: tuple[float, float] = core.call(run).result()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = LocalEngine(EngineBinding(model=str(args.model)), EngineSettings(prompt_cache=False))
    asyncio.run(engine.start())
    while not asyncio.run(engine.health()).ready:
        time.sleep(0.5)
    assert engine._preparer is not None
    low = (engine._preparer.family.image_edges() or (64, 64))[0]
    asyncio.run(engine_run(engine, prompt(99, low), 2))  # warm-up
    for r in range(args.rounds):
        p = prompt(r, low)
        mine = asyncio.run(engine_run(engine, p, args.tokens))
        generate, bare = baseline(engine, p, args.tokens)
        per_token = mine["decode_s"] / (mine["tokens"] - 1)
        print(
            f"round {r}: engine {per_token * 1000:.1f} ms/token, generate {generate * 1000:.1f}, "
            f"bare loop {bare * 1000:.1f}",
            flush=True,
        )
    asyncio.run(engine.close())


if __name__ == "__main__":
    main()
