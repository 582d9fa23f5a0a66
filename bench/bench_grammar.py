"""Grammar-constrained decoding benchmark (issue 5): per-token decode time with a json_schema
grammar against unconstrained decoding, and grammar compile time cold against cached.

Run by hand, never in tests (the smolvlm-256m-shaped dummy model is ~500 MB; pass ``--model`` to
reuse one already written):

    .venv/bin/python bench/bench_grammar.py [--model DIR] [--rounds 7] [--write docs/benchmarks.md]

One ``LocalEngine`` on the ``smolvlm-256m``-shaped dummy model (idefics3; the real model's shapes
and 49,280-token vocabulary, random weights). Each round runs every mode once, in turn, on the same
short text prompt at temperature 1 with a fixed seed: unconstrained, a json_schema with one free
string (the random model rarely closes it, so the grammar works through ``--tokens`` tokens of
string), a structured json_schema (enums, bounded numbers, arrays, nested objects: the grammar
switches state almost every token), and ``tool_choice="required"`` over two tools. Per-token time
is the time between the first and the last text event divided by the tokens between them (prefill
excluded); n=1 and n=8 (one decode step serves 8 rows, each with its own matcher). Medians over
rounds. Compile: a fresh ``Grammars`` per round (tokenizer view built first, timed apart), then the
structured schema compiled (cold) and compiled again (cached: the spec lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlmserve.catalog.spec import EngineBinding  # noqa: E402
from vlmserve.engine.local import LocalEngine  # noqa: E402
from vlmserve.engine.local.dummy import make_dummy_model  # noqa: E402
from vlmserve.engine.local.grammar import Grammars, GrammarSpec, prepare_schema  # noqa: E402
from vlmserve.engine.types import (  # noqa: E402
    Delta,
    GenerationRequest,
    Message,
    Prompt,
    SamplingParams,
    TextPart,
)
from vlmserve.settings import EngineSettings  # noqa: E402

SECTION = "## Grammar-constrained decoding (issue 5)"
FREE = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
STRUCTURED = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "bird", "fish"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string", "maxLength": 12},
        "vaccinated": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
        "weight": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0, "maximum": 99}]},
        "owner": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 999},
                "city": {"enum": ["Paris", "Rome", "Oslo"]},
            },
            "required": ["id", "city"],
            "additionalProperties": False,
        },
    },
    "required": ["kind", "age", "name", "vaccinated", "tags", "weight", "owner"],
    "additionalProperties": False,
}
OWNER = STRUCTURED["properties"]["owner"]  # type: ignore[index]
TOOLS = (
    {"type": "function", "function": {"name": "find_owner", "parameters": OWNER}},
    {"type": "function", "function": {"name": "describe_pet", "parameters": STRUCTURED}},
)


def json_mode(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}


MODES: dict[str, dict[str, Any]] = {
    "unconstrained": {},
    "json_schema, free string": {"response_format": json_mode(FREE)},
    "json_schema, structured": {"response_format": json_mode(STRUCTURED)},
    "tools, required": {"tools": TOOLS, "tool_choice": "required"},
}


def start(model: Path) -> LocalEngine:
    engine = LocalEngine(EngineBinding(model=str(model)), EngineSettings(prompt_cache=False))
    asyncio.run(engine.start())
    while not (health := asyncio.run(engine.health())).ready:
        if "failed" in health.detail:
            raise RuntimeError(health.detail)
        time.sleep(0.1)
    return engine


async def per_step_ms(engine: LocalEngine, request: GenerationRequest) -> float:
    """Milliseconds per decode step (the prefill's token excluded) of one request."""
    stamps: list[float] = []
    tokens = [0] * request.sampling.n
    async for event in engine.generate(request):
        if isinstance(event, Delta) and event.num_tokens:
            stamps.append(time.perf_counter())
            tokens[event.index] += 1
    return (stamps[-1] - stamps[0]) * 1000 / max(max(tokens) - 1, 1)


def decode_table(engine: LocalEngine, rounds: int, tokens: int) -> list[str]:
    prompt = Prompt((Message("user", (TextPart("Describe a pet of yours in JSON."),)),))
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds + 1):  # round 0 warms up (and compiles every grammar once)
        for n, modes in ((1, list(MODES)), (8, list(MODES)[:2])):
            sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=tokens, n=n, seed=r)
            for mode in modes:
                request = GenerationRequest(f"b{n}-{r}-{mode}", prompt, sampling)
                ms = asyncio.run(per_step_ms(engine, replace(request, **MODES[mode])))
                if r:
                    times.setdefault((mode, n), []).append(ms)
    rows = [
        "| mode | n=1: ms/token | vs unconstrained | n=8: ms/step | vs unconstrained |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        cells = []
        for n in (1, 8):
            if (mode, n) not in times:
                cells += ["", ""]  # rows end at different lengths: per-step times would mislead
                continue
            median = statistics.median(times[(mode, n)])
            base = statistics.median(times[("unconstrained", n)])
            cells += [f"{median:.1f}", f"{(median / base - 1) * 100:+.1f}%"]
        rows.append(f"| {mode} | " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    return rows


def compile_table(engine: LocalEngine, rounds: int) -> list[str]:
    loaded = engine._loaded
    assert loaded is not None
    vocab = int(loaded.model.config.get_text_config(decoder=True).vocab_size)
    prepare, cold, cached = [], [], []
    for _ in range(rounds):
        grammars = Grammars(loaded.tokenizer, vocab, loaded.eos_token_ids)
        t0 = time.perf_counter()
        grammars.prepare()
        t1 = time.perf_counter()
        spec = GrammarSpec("json_schema", json.dumps(prepare_schema(STRUCTURED)))
        grammars.compile(spec)
        t2 = time.perf_counter()
        grammars.compile(GrammarSpec("json_schema", json.dumps(prepare_schema(STRUCTURED))))
        t3 = time.perf_counter()
        prepare.append((t1 - t0) * 1000)
        cold.append((t2 - t1) * 1000)
        cached.append((t3 - t2) * 1000)
    rows = [
        "| step | median ms |",
        "|---|---|",
        f"| tokenizer view (once per model) | {statistics.median(prepare):.0f} |",
        f"| compile structured schema, cold | {statistics.median(cold):.1f} |",
        f"| same schema again, cached | {statistics.median(cached):.3f} |",
    ]
    print("\n".join(rows), file=sys.stderr)
    return rows


NOTES = """\
Reading it: the grammar's work per token is filling one 49,280-bit mask per row (xgrammar) and
applying it to the logits; its cost does not depend on the model, so its share shrinks as the
model grows and is largest on this small model. Compiling a schema happens once per distinct
schema (the cache keys on the schema text); the tokenizer view is built once per loaded model,
on the first constrained request. Numbers are from a shared 2-core machine: medians over
interleaved rounds, so a busy neighbour slows every mode of a round alike."""


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start_at = text.find(SECTION)
    if start_at >= 0:
        end = text.find("\n## ", start_at + len(SECTION))
        text = text[:start_at] + body + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a smolvlm-256m dummy model directory")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    parser.add_argument("--write", type=Path, help="replace our section in this markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_dummy_model(Path(tmp) / "smolvlm", "idefics3", "smolvlm-256m")
        engine = start(model)
        try:
            decode = decode_table(engine, args.rounds, args.tokens)
            compiled = compile_table(engine, args.rounds)
        finally:
            asyncio.run(engine.close())
    if args.write:
        command = (
            "    .venv/bin/python bench/bench_grammar.py --model DIR "
            f"--rounds {args.rounds} --tokens {args.tokens} --write {args.write}"
        )
        intro = __doc__.split("\n\n")[2].replace("\n", " ")
        body = "\n\n".join([SECTION, intro, command, "\n".join(decode), "\n".join(compiled), NOTES])
        write_section(args.write, body + "\n")


if __name__ == "__main__":
    main()
