"""Families benchmark (issue 15): the engine against plain ``model.generate`` on each family's
shape-faithful dummy, and the image tokens of a 1024x768 picture at detail low and high.

Run by hand, never in tests (2B-parameter shapes take seconds per prefill on a small CPU):

    .venv/bin/python bench/bench_families.py [--shapes smolvlm:smolvlm2-256m ...] \
        [--rounds 3] [--write docs/benchmarks.md]

Per shape (a dummy directory built once under ``--models``): one ``LocalEngine`` (prompt cache off,
so every prefill is cold and both sides compute the same) serves a prompt of about 300 text
tokens and one 1024x768 picture fitted to the family's detail=low budget (as the media layer
does). Engine: prefill tokens/s = prompt tokens / time from ``generate`` to the first token
(chat template and processor included); decode tokens/s = (tokens - 1) / time from the first
token to the last. Baseline, the same model object on the engine's own step thread (one OpenMP
team), its linear layers as stock transformers has them (the engine packs them for oneDNN):
processor + ``model.generate(max_new_tokens=1)`` for prefill, and ``generate`` of the same
number of tokens (``min_new_tokens`` holds it there) minus the one-token run for decode. Greedy
on both sides. Medians over rounds; the engine and the baseline alternate within each round, and
which of them goes first alternates from round to round.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import stock_linears, write_section  # noqa: E402 - bench/ is the script's folder

from vlmserve.catalog.spec import EngineBinding  # noqa: E402
from vlmserve.engine.local import LocalEngine  # noqa: E402
from vlmserve.engine.local.describe import describe_model  # noqa: E402
from vlmserve.engine.types import (  # noqa: E402
    Delta,
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    SamplingParams,
    Started,
    TextPart,
)
from vlmserve.settings import EngineSettings  # noqa: E402

SECTION = "## Model families (issue 15)"
DEFAULT_SHAPES = (
    "idefics3:smolvlm-256m",
    "smolvlm:smolvlm2-256m",
    "llava_onevision:llava-onevision-0.5b",
    "internvl:internvl3-1b",
    "qwen2_vl:qwen2-vl-2b",
    "qwen3_vl:qwen3-vl-2b",
    "qwen2_5_vl:qwen2.5-vl-3b",
    "gemma3:gemma3-4b",
    "mistral3:ministral3-3b",
)
WORDS = "the quick brown fox jumps over a lazy dog near the river bank at dawn".split()  # noqa: SIM905


def text(round_: int, words: int = 200) -> str:
    return f"Round {round_}. " + " ".join(
        WORDS[(i * 7 + round_) % len(WORDS)] for i in range(words)
    )


def picture(edge: int, seed: int) -> MediaInput:
    scale = min(1.0, edge / 1024)
    size = (max(1, round(1024 * scale)), max(1, round(768 * scale)))
    im = Image.effect_noise(size, 30 + seed).convert("RGB")
    return MediaInput("image", (im,), hashlib.sha256(im.tobytes()).hexdigest())


def prompt(round_: int, edge: int) -> Prompt:
    parts = (MediaPart(0), TextPart(text(round_) + "\nDescribe the picture."))
    return Prompt((Message("user", parts),), (picture(edge, round_),))


async def engine_run(engine: LocalEngine, p: Prompt, max_tokens: int) -> dict[str, float]:
    req = GenerationRequest(
        f"b{time.monotonic_ns()}", p, SamplingParams(temperature=0.0, max_tokens=max_tokens)
    )
    start = time.perf_counter()
    first = last = 0.0
    num_tokens = prompt_tokens = 0
    async for event in engine.generate(req):
        if isinstance(event, Started):
            prompt_tokens = event.usage.prompt_tokens
        elif isinstance(event, Delta):
            now = time.perf_counter()
            first = first or now
            last = now
            num_tokens += event.num_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "tokens": num_tokens,
        "prefill_s": first - start,
        "decode_s": last - first,
    }


def baseline_run(engine: LocalEngine, p: Prompt, num_tokens: int) -> dict[str, float]:
    """Processor + ``model.generate`` on the engine's step thread (its one OpenMP team)."""
    loaded, core, preparer = engine._loaded, engine._core, engine._preparer
    assert loaded is not None and core is not None and preparer is not None

    def run() -> dict[str, float]:
        with stock_linears(loaded.model, core.runner):  # outside the timings
            return timed()

    def timed() -> dict[str, float]:
        image = p.media[0].frames[0]
        start = time.perf_counter()
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": part.text}]}
            for part in p.messages[0].parts
            if isinstance(part, TextPart)
        ]
        rendered = loaded.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        kwargs = {"images": preparer.family.nest_images([preparer.family.fit_image(image)])}
        kwargs.update(preparer.family.processor_kwargs())
        inputs = loaded.processor(text=[rendered], return_tensors="pt", **kwargs)
        inputs = {
            k: (v.to(loaded.dtype) if v.is_floating_point() else v).to(loaded.device)
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            t1 = time.perf_counter()
            loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
            one = time.perf_counter() - t1
            prefill = time.perf_counter() - start
            t0 = time.perf_counter()
            loaded.model.generate(
                **inputs, max_new_tokens=num_tokens, min_new_tokens=num_tokens, do_sample=False
            )
            whole = time.perf_counter() - t0
        return {
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "tokens": num_tokens,
            "prefill_s": prefill,
            "decode_s": max(whole - one, 1e-9),
        }

    return core.call(run).result()  # type: ignore[no-any-return]


def measure(
    family: str, shape: str, models: Path, rounds: int, max_tokens: int, dtype: str = "auto"
) -> dict[str, Any]:
    path = models / f"{family}-{shape}"
    if not path.exists():
        # In a process of its own: the builder's random model would still be in this one's
        # memory when the engine loads the directory (a 3B float32 model twice over: 24 GiB).
        build = [sys.executable, "-m", "vlmserve", "make-dummy-model", str(path)]
        subprocess.run([*build, "--family", family, "--shape", shape], check=True)
    described = describe_model(str(path))
    assert described is not None and described.image_edges is not None
    low_edge = described.image_edges[0]
    binding = EngineBinding(model=str(path), dtype=dtype)
    engine = LocalEngine(binding, EngineSettings(prompt_cache=False))
    asyncio.run(engine.start())
    while not asyncio.run(engine.health()).ready:
        assert "failed" not in asyncio.run(engine.health()).detail
        time.sleep(0.5)
    asyncio.run(engine_run(engine, prompt(99, low_edge), 2))  # warm-up
    rows: list[dict[str, float]] = []
    for r in range(rounds):
        p = prompt(r, low_edge)
        if r % 2:  # which side goes first alternates: neither gets the warmer machine each round
            base = baseline_run(engine, p, max_tokens)
            mine = asyncio.run(engine_run(engine, p, max_tokens))
        else:
            mine = asyncio.run(engine_run(engine, p, max_tokens))
            base = baseline_run(engine, p, int(mine["tokens"]))
        n = mine["tokens"]
        rows.append(
            {
                "engine_prefill": mine["prompt_tokens"] / mine["prefill_s"],
                "base_prefill": base["prompt_tokens"] / base["prefill_s"],
                "engine_decode": (n - 1) / mine["decode_s"] if n > 1 else 0.0,
                "base_decode": (
                    (base["tokens"] - 1) / base["decode_s"] if base["tokens"] > 1 else 0.0
                ),
                "prompt_tokens": mine["prompt_tokens"],
                "tokens": n,
            }
        )
        print(f"round {r}", rows[-1], file=sys.stderr, flush=True)
    loaded_dtype = str(engine._loaded.dtype).removeprefix("torch.") if engine._loaded else "?"
    asyncio.run(engine.close())
    result = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        "family": described.family,
        "shape": shape,
        "native_video": described.native_video,
        "image_tokens": described.image_tokens,
        "dtype": loaded_dtype,
        **result,
    }


def table(results: list[dict[str, Any]], skipped: list[str], command: str) -> str:
    lines = [
        SECTION,
        "",
        "Command (run under `flock -x /tmp/bench.lock`, on the 2-core development machine shared "
        "with other engineers' work, so absolute figures are noisy; engine and baseline alternate "
        "within each round):",
        "",
        f"    {command}",
        "",
        "Per family, its shape-faithful dummy (random weights, the real checkpoint's dimensions), "
        "in the dtype column's dtype (`--dtype`; auto: bf16 where the CPU computes it natively, "
        "else float32): a ~300-token prompt with one 1024x768 picture at detail=low; prefill "
        "and decode tokens/s of the engine (`LocalEngine`, prompt cache off) and of plain "
        "`model.generate` on the same model object (processor included in both prefills); "
        "medians. Image tokens: a 1024x768 picture fitted to the family's low/high budget "
        "(`vlmserve models` prints the same).",
        "",
        "| family | shape | dtype | prompt tokens | prefill tok/s engine / generate | decode "
        "tok/s engine / generate | image tokens 1024x768 low / high |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tokens = r["image_tokens"]
        lines.append(
            f"| {r['family']} | {r['shape']} | {r['dtype']} | {r['prompt_tokens']:.0f} | "
            f"{r['engine_prefill']:.0f} / {r['base_prefill']:.0f} | "
            f"{r['engine_decode']:.1f} / {r['base_decode']:.1f} | "
            f"{tokens.get('low')} / {tokens.get('high')} |"
        )
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="*", default=list(DEFAULT_SHAPES))
    parser.add_argument("--skip", nargs="*", default=[], help="FAMILY:SHAPE=why")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--models", type=Path, default=Path("/tmp/vlmserve-bench-models"))
    parser.add_argument("--dtype", default="auto", help="the binding's dtype, as in the catalogue")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    results = []
    for item in args.shapes:
        family, shape = item.split(":")
        print(f"measuring {family} {shape} ...", file=sys.stderr, flush=True)
        results.append(
            measure(family, shape, args.models, args.rounds, args.max_tokens, args.dtype)
        )
        print(results[-1], file=sys.stderr, flush=True)
    command = "flock -x /tmp/bench.lock .venv/bin/python bench/bench_families.py " + " ".join(
        sys.argv[1:]
    )
    out = table(results, [s.replace("=", ": ") for s in args.skip], command)
    print(out)
    if args.write:
        write_section(args.write, SECTION, out)


if __name__ == "__main__":
    main()
