"""Gateway overhead (issue 7): what a proxy in front of an instant upstream adds to a chat request
carrying one small PNG. Run by hand:

    .venv/bin/python bench/bench_gateway.py --model DIR --litellm /tmp/litellm-venv/bin/litellm

Four ways to the same upstream, measured in one run, interleaved round by round (the order
rotates) so machine noise hits them alike, one keep-alive connection per way and round,
requests one at a time:
- ``direct``: straight to the upstream (the baseline every "added" figure subtracts);
- ``passthrough``: a bare 30-line FastAPI app forwarding the body with httpx (below);
- ``vlmserve``: ``vlmserve serve --model PROC --upstream URL`` (remote mode) doing its full intake:
  validation, base64 decode, sniffing, decoding, sizing to the processor's budget, identity hash,
  re-encoding for the upstream, routing, SSE consumed and re-assembled, usage;
- ``litellm``: the LiteLLM proxy (its own virtualenv: ``python3 -m venv /tmp/litellm-venv &&
  /tmp/litellm-venv/bin/pip install 'litellm[proxy]'``), offline on loopback, the upstream
  configured as an OpenAI-compatible model.

The upstream answers at once, from precomputed bytes, with a raw asyncio server: a JSON
completion, or for ``stream: true`` (what vlmserve asks for) the same answer as SSE chunks with
usage on every chunk. ``--model`` is a model directory of which only the processor and tokenizer
files are copied (vlmserve loads no weights in remote mode); without it a tiny dummy model is
built. ``--distinct`` sends a different picture with every request (no cache can help).
Reported: p50 / p99 per way and the added latency (way - direct), medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import free_port
from vlmserve.engine.remote.processor import REQUIRED_FILES

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_MODEL = "fake-vlm"
CHAT = "/v1/chat/completions"
KEY = "sk-vlmserve-bench-0123456789abcdef0123456789abcdef"  # LiteLLM's master key; others ignore it

UPSTREAM = r"""
import asyncio, json, sys

PORT = int(sys.argv[1])
USAGE = {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}
CHOICE = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
BASE = {"id": "chatcmpl-fake", "created": 1700000000, "model": "fake-vlm"}


def http(body, ctype):
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def chunk(delta, reason, usage):
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    body = {**BASE, "object": "chat.completion.chunk", "choices": [choice], "usage": usage}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


JSON = http(json.dumps({**BASE, "object": "chat.completion", "choices": [CHOICE],
                        "usage": USAGE}).encode(), "application/json")
SSE = http(b"".join([
    chunk({"role": "assistant", "content": ""}, None, {**USAGE, "completion_tokens": 0,
                                                        "total_tokens": 100}),
    chunk({"content": "ok"}, None, USAGE),
    chunk({}, "stop", USAGE),
    b"data: " + json.dumps({**BASE, "object": "chat.completion.chunk", "choices": [],
                            "usage": USAGE}).encode() + b"\n\n",
    b"data: [DONE]\n\n",
]), "text/event-stream")
MODELS = http(json.dumps({"object": "list", "data": [
    {"id": "fake-vlm", "object": "model", "max_model_len": 32768}]}).encode(), "application/json")


class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.data = transport, b""

    def data_received(self, data):
        self.data += data
        while True:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.data[:end].lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(self.data) < end + 4 + length:
                return
            body = self.data[end + 4:end + 4 + length]
            self.data = self.data[end + 4 + length:]
            if head.startswith(b"get"):
                self.transport.write(MODELS)
            elif b'"stream":true' in body.replace(b" ", b""):
                self.transport.write(SSE)
            else:
                self.transport.write(JSON)


async def main():
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", PORT)
    await server.serve_forever()

asyncio.run(main())
"""

PASSTHROUGH = r"""
import sys

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

UPSTREAM, PORT = sys.argv[1], int(sys.argv[2])
app = FastAPI()
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=60)


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    upstream = await client.post(
        "/chat/completions",
        content=await request.body(),
        headers={"content-type": "application/json"},
    )
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type"),
    )


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False)
"""

LITELLM_CONFIG = """
model_list:
  - model_name: step-1o-turbo-vision
    litellm_params:
      model: openai/{model}
      api_base: {upstream}
      api_key: unused
litellm_settings:
  telemetry: false
  drop_params: true
"""


def png_data_url(seed: int, size: tuple[int, int] = (96, 64)) -> str:
    """A small picture with many colours (a photo-like gradient), different for each seed."""
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 5 + seed * 7) % 256, (y * 3 + seed * 11) % 256, (x * y + seed) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    image.putpixel((0, 0), (seed & 255, seed >> 8 & 255, seed >> 16 & 255))  # unique per seed
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(seed: int) -> bytes:
    body = {
        "model": "step-1o-turbo-vision",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": png_data_url(seed)}},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ],
        "max_tokens": 16,
    }
    return json.dumps(body).encode()


class RawClient:
    """A minimal keep-alive HTTP/1.1 client, so the figures are the servers' costs, not httpx's."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def post(self, body: bytes) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        answer = await self.reader.readuntil(b"\r\n\r\n")
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(answer.decode() + (await self.reader.read(2000)).decode())
        headers = answer.lower()
        if b"transfer-encoding: chunked" in headers:
            return await self._chunked()
        length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
        return await self.reader.readexactly(length)

    async def _chunked(self) -> bytes:
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readuntil(b"\r\n")
        return b"".join(parts)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(port: int, path: str, bodies: list[bytes], warmup: int) -> list[float]:
    async with RawClient(port, path) as client:
        for body in bodies[:warmup]:
            await client.post(body)
        out = []
        for body in bodies[warmup:]:
            start = time.perf_counter()
            await client.post(body)
            out.append((time.perf_counter() - start) * 1000)
    return out


@contextmanager
def process(
    cmd: list[str], ready_url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{cmd[0]} did not start:\n{log.read()[-3000:].decode()}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def processor_only(model: Path, into: Path) -> Path:
    """The model's processor and tokenizer files, without its weights."""
    into.mkdir()
    names = {n for group in REQUIRED_FILES for n in group} | {
        "chat_template.jinja",
        "chat_template.json",
        "special_tokens_map.json",
        "generation_config.json",
    }
    for name in names:
        if (model / name).is_file():
            shutil.copy(model / name, into / name)
    return into


Way = tuple[int, str, int]  # port, path, pid of the process whose CPU time is its cost


def start_all(args: argparse.Namespace, stack: ExitStack, tmp: Path) -> dict[str, Way]:
    """Every way to the upstream; the processes live as long as ``stack``."""
    up = free_port()
    proc = stack.enter_context(
        process([sys.executable, "-c", UPSTREAM, str(up)], f"http://127.0.0.1:{up}/v1/models")
    )
    upstream = f"http://127.0.0.1:{up}/v1"
    ways = {"direct": (up, CHAT, proc.pid)}

    port = free_port()
    proc = stack.enter_context(
        process(
            [sys.executable, "-c", PASSTHROUGH, upstream, str(port)],
            f"http://127.0.0.1:{port}/docs",
        )
    )
    ways["passthrough"] = (port, CHAT, proc.pid)

    model = args.model
    if model is None:
        from vlmserve.dummy import make_dummy_model

        model = make_dummy_model(tmp / "tiny", "idefics3", "tiny")
    proc_dir = processor_only(model, tmp / "processor")
    port = free_port()
    cmd = [sys.executable, "-m", "vlmserve", "serve", "--model", str(proc_dir)]
    cmd += ["--upstream", upstream, "--upstream-model", UPSTREAM_MODEL, "--port", str(port)]
    cmd += ["--log-level", "warning"]
    proc = stack.enter_context(
        process(cmd, f"http://127.0.0.1:{port}/readyz", {"HF_HUB_OFFLINE": "1"})
    )
    ways["vlmserve"] = (port, CHAT, proc.pid)

    if args.litellm:
        config = tmp / "litellm.yaml"
        config.write_text(LITELLM_CONFIG.format(model=UPSTREAM_MODEL, upstream=upstream))
        port = free_port()
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": KEY,
        }
        cmd = [args.litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        ready = f"http://127.0.0.1:{port}/health/liveliness"
        proc = stack.enter_context(process(cmd, ready, env))
        ways["litellm"] = (port, CHAT, proc.pid)
    return ways


async def check(ways: dict[str, Way]) -> None:
    """Every way answers the canned completion, and vlmserve bills the upstream's usage."""
    for name, (port, path, _) in ways.items():
        async with RawClient(port, path) as client:
            answer = json.loads(await client.post(chat_body(0)))
        assert answer["choices"][0]["message"]["content"] == "ok", (name, answer)
        assert answer["usage"]["prompt_tokens"] == 100, (name, answer["usage"])


def cpu_ms(pid: int) -> float:
    """CPU time of ``pid`` and its descendants, all threads (schedstat: nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
        for child in (task / "children").read_text().split():
            total += round(cpu_ms(int(child)) * 1e6)
    return total / 1e6


async def measure(args: argparse.Namespace, ways: dict[str, Way]) -> None:
    await check(ways)
    count = args.warmup + args.requests
    seeds = range(1, count + 1) if args.distinct else [0] * count
    names = list(ways)
    p50: dict[str, list[float]] = {n: [] for n in names}
    p99: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            # Bodies are built per round so a --distinct round never repeats an earlier picture.
            bodies = [chat_body(s + r * count if args.distinct else s) for s in seeds]
            port, path, pid = ways[name]
            before = cpu_ms(pid)
            times = await timed(port, path, bodies, args.warmup)
            cpu[name].append((cpu_ms(pid) - before) / len(bodies))
            p50[name].append(percentile(times, 0.5))
            p99[name].append(percentile(times, 0.99))
        print(f"round {r + 1}: " + ", ".join(f"{n} {p50[n][-1]:.2f}" for n in names), flush=True)
    report(names, p50, p99, cpu)


def report(names: list[str], *figures: dict[str, list[float]]) -> None:
    p50, p99, cpu = figures
    med = statistics.median
    base50, base99 = p50["direct"], p99["direct"]
    print(
        "\n| way | p50 ms | p99 ms | added p50 ms | added p99 ms | added p50 vs passthrough "
        "| CPU ms per request (its process) |"
    )
    print("|---|---|---|---|---|---|---|")
    added_pass = med([a - b for a, b in zip(p50["passthrough"], base50, strict=True)])
    for name in names:
        added50 = med([a - b for a, b in zip(p50[name], base50, strict=True)])
        added99 = med([a - b for a, b in zip(p99[name], base99, strict=True)])
        ratio = f"{added50 / added_pass:.2f}x" if name != "direct" else "-"
        print(
            f"| {name} | {med(p50[name]):.2f} | {med(p99[name]):.2f} | "
            f"{added50:.2f} | {added99:.2f} | {ratio} | {med(cpu[name]):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="model directory for the processor files")
    parser.add_argument("--litellm", help="the litellm executable of its own virtualenv")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--distinct", action="store_true", help="a new picture every request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        ways = start_all(args, stack, Path(tmp))
        asyncio.run(measure(args, ways))


if __name__ == "__main__":
    main()
