"""A bare decode step of SmolVLM-256M's language model, with and without each of the engine's
decode changes (milliseconds per step, median of 32 steps after a 100-token prompt; each
variant three times, alternating, in one process). Run by hand, alone:

    flock -x /tmp/bench.lock .venv/bin/python bench/probe_decode.py [--model DIR]

- stacked vs separate: q/k/v and gate/up as one oneDNN weight each, or one weight per layer
  (packed_linear.py), through transformers' forward;
- growing vs dynamic: the cache's layers append in place, or concatenate (kv_cache.py), at a
  100- and a 1,200-token context;
- direct vs transformers: the decode step straight through the layers (decode_step.py), or
  transformers' forward, at 1 and 8 rows; and the same on a copy of the model narrowed to 64
  wide, where the matrices cost nothing and what is left is dispatch and Python.

The model directory defaults to the batching benchmark's (``make-dummy-model --shape
smolvlm-256m``); it is built when missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlmserve.engine.local import packed_linear  # noqa: E402
from vlmserve.engine.local.decode_step import DecodeStep  # noqa: E402
from vlmserve.engine.local.kv_cache import new_cache  # noqa: E402

DEFAULT_MODEL = Path("/tmp/vlmserve-bench-batching/smolvlm-256m")
ROUNDS = 3


def load(model_dir: Path, narrow: bool = False) -> Any:
    from transformers import AutoConfig, AutoModelForImageTextToText

    auto: Any = AutoModelForImageTextToText  # transformers' auto classes are untyped
    if not narrow:
        return auto.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = AutoConfig.from_pretrained(model_dir)
    text = config.text_config
    text.hidden_size, text.intermediate_size = 64, 128
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 1, 32
    text.vocab_size = 1000
    return auto.from_config(config, dtype=torch.float32).eval()


def decode_ms(
    model: Any, make_cache: Callable[[], Any], direct: DecodeStep | None, rows: int, prompt: int
) -> float:
    """Median ms of one decode step after a ``prompt``-token prefill of ``rows`` rows."""
    ids = torch.randint(1, 900, (rows, prompt), generator=torch.Generator().manual_seed(0))
    costs = []
    with torch.inference_mode():
        cache = make_cache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for step in range(32):
            started = time.perf_counter()
            positions = torch.full((rows, 1), prompt + step)
            if direct is not None:
                logits = direct(token, positions, None, cache)
            else:
                logits = model(
                    input_ids=token,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            costs.append(time.perf_counter() - started)
    return statistics.median(costs) * 1000


def compare(name: str, variants: dict[str, Callable[[], float]]) -> None:
    results: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(ROUNDS):
        for key, run in variants.items():
            results[key].append(run())
    cells = ", ".join(
        f"{key} {statistics.median(v):.1f} ({' / '.join(f'{x:.1f}' for x in v)})"
        for key, v in results.items()
    )
    print(f"{name}: {cells} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args()
    if not args.model.exists():
        from vlmserve.dummy import make_dummy_model

        make_dummy_model(args.model, "idefics3", "smolvlm-256m")
    model = load(args.model)

    def dynamic() -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=model.config)

    def growing() -> Any:
        return new_cache(model.config)

    def packed(stacked: bool) -> Callable[[], float]:
        def run() -> float:
            packed_linear.unpack_language_model(model)
            if stacked:
                packed_linear.pack_language_model(model, tied_head_max_bytes=1 << 30)
            else:  # one packed weight per layer, as before the stacking
                siblings = packed_linear.SHARED_INPUT
                packed_linear.SHARED_INPUT = ()
                try:
                    packed_linear.pack_language_model(model, tied_head_max_bytes=1 << 30)
                finally:
                    packed_linear.SHARED_INPUT = siblings
            return decode_ms(model, dynamic, None, 1, 100)

        return run

    compare("stacked vs separate, 1 row", {"stacked": packed(True), "separate": packed(False)})
    packed_linear.unpack_language_model(model)
    packed_linear.pack_language_model(model, tied_head_max_bytes=1 << 30)
    direct = DecodeStep.of(model)
    for prompt in (100, 1200):
        compare(
            f"growing vs dynamic cache, 1 row, {prompt}-token context",
            {
                "growing": lambda p=prompt: decode_ms(model, growing, None, 1, p),  # type: ignore[misc]
                "dynamic": lambda p=prompt: decode_ms(model, dynamic, None, 1, p),  # type: ignore[misc]
            },
        )
    for rows in (1, 8):
        compare(
            f"direct vs transformers, {rows} rows",
            {
                "direct": lambda r=rows: decode_ms(model, growing, direct, r, 100),  # type: ignore[misc]
                "transformers": lambda r=rows: decode_ms(model, growing, None, r, 100),  # type: ignore[misc]
            },
        )
    narrow = load(args.model, narrow=True)
    packed_linear.pack_language_model(narrow, tied_head_max_bytes=1 << 30)
    narrow_direct = DecodeStep.of(narrow)

    def narrow_cache() -> Any:
        return new_cache(narrow.config)

    compare(
        "64-wide copy, direct vs transformers, 1 row",
        {
            "direct": lambda: decode_ms(narrow, narrow_cache, narrow_direct, 1, 100),
            "transformers": lambda: decode_ms(narrow, narrow_cache, None, 1, 100),
        },
    )


if __name__ == "__main__":
    main()
