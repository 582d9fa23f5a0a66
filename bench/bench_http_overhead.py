"""HTTP layer overhead (issue 2): a 1-token completion through the server vs the same call made
directly on the engine in-process, same dummy model, same run. Run by hand:

    .venv/bin/python bench/bench_http_overhead.py --requests 300 --rounds 5

Two pairs are measured, interleaved round by round so machine noise hits both sides alike:
- ``local``: the tiny idefics3 dummy model in the LocalEngine (server: ``vlmserve serve``);
- ``fake``: the zero-compute FakeEngine (server = the same app in a uvicorn process), which isolates
  what the HTTP layer itself adds; no API key (open mode), usage ledger and metrics on;
- ``fake+keys`` (issue 13): the same with a stored API key sent on every request, a tier with all
  three limits (concurrency, RPM, TPM: the prompt is counted before generating) set high enough
  never to refuse, the usage ledger and the metrics on.
Reported: p50 / p99 per side and the added latency (server - direct), medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import free_port
from tests.fakes import FakeEngine
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.client import EngineClient
from vlmserve.engine.types import (
    GenerationRequest,
    Message,
    Prompt,
    SamplingParams,
    TextPart,
)
from vlmserve.settings import EngineSettings

ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "model": "step-1o-turbo-vision",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
    "temperature": 0,
}
FAKE_APP = """
import json, os
import uvicorn
from tests.fakes import FakeEngine, fake_factory
from vlmserve.api.app import create_app
from vlmserve.api.services import build_services
from vlmserve.settings import Settings
settings = Settings(**json.loads(os.environ["BENCH_SETTINGS"]))
app = create_app(settings, build_services(settings, fake_factory(FakeEngine())))
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(n: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(max(5, n // 10)):  # warm-up
        await call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def direct_call(engine: EngineClient) -> Callable[[], Awaitable[None]]:
    prompt = Prompt((Message("user", (TextPart("hi"),)),))
    sampling = SamplingParams(temperature=0.0, max_tokens=1)
    counter = iter(range(10**9))

    async def call() -> None:
        request = GenerationRequest(
            f"bench-{next(counter)}", prompt, sampling, context_window=32768
        )
        async for _ in engine.generate(request):
            pass

    return call


class RawClient:
    """A minimal keep-alive HTTP/1.1 client, so the figure is the server's cost, not httpx's."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        body = json.dumps(BODY).encode()
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def post(self) -> None:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode())
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await self.reader.readexactly(length)


def http_call(client: RawClient) -> Callable[[], Awaitable[None]]:
    return client.post


@dataclass(frozen=True)
class Server:
    name: str
    cmd: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # sent as a bearer token
    cwd: Path = ROOT  # another checkout: the baseline ("before") code


def start_server(server: Server) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLMSERVE_SERVER__LOG_LEVEL": "warning",
        **server.env,
    }
    proc = subprocess.Popen(server.cmd, env=env, cwd=server.cwd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{server.port}/readyz"
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server {server.name} did not start")


async def wait_ready(engine: EngineClient) -> None:
    await engine.start()
    while not (await engine.health()).ready:  # noqa: ASYNC110 - polling the engine's own API
        await asyncio.sleep(0.1)


async def measure(
    engine: EngineClient, servers: list[Server], n: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Each round: the direct path, then every server (in a rotating order), so machine noise
    hits all sides alike."""
    await wait_ready(engine)
    procs = [start_server(server) for server in servers]
    direct: list[list[float]] = []
    timings: dict[str, list[list[float]]] = {server.name: [] for server in servers}
    try:
        for r in range(rounds):
            direct.append(await timed(n, direct_call(engine)))
            for server in servers[r % len(servers) :] + servers[: r % len(servers)]:
                # a fresh connection: uvicorn drops idle keep-alives after 5 s
                async with RawClient(server.port, server.key) as client:
                    timings[server.name].append(await timed(n, http_call(client)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        await engine.close()
    return {name: summarize(name, direct, runs) for name, runs in timings.items()}


def summarize(name: str, direct: list[list[float]], server: list[list[float]]) -> dict[str, float]:
    med = statistics.median
    d50 = [percentile(d, 0.5) for d in direct]
    s50 = [percentile(s, 0.5) for s in server]
    row = {
        "direct_p50": med(d50),
        "direct_p99": med(percentile(d, 0.99) for d in direct),
        "server_p50": med(s50),
        "server_p99": med(percentile(s, 0.99) for s in server),
        "added_p50": med(s - d for s, d in zip(s50, d50, strict=True)),
    }
    row["added_p99"] = row["server_p99"] - row["direct_p99"]
    print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    return row


async def fake_servers(tmp: Path, baseline: Path | None) -> list[Server]:
    """The fake-engine servers: the baseline checkout's (before), open mode, keys and limits."""
    key = await _create_key(tmp / "keys")
    server = {"log_level": "warning"}
    tier = {"concurrency": 1000, "rpm": 10**7, "tpm": 10**12}
    variants: list[tuple[str, dict[str, Any], str | None, Path]] = [
        ("fake", {"server": server, "storage": {"data_dir": str(tmp / "open")}}, None, ROOT),
        (
            "fake+keys",
            {
                "server": server,
                "storage": {"data_dir": str(tmp / "keys")},
                "limits": {"tiers": {"bench": tier}, "default_tier": "bench"},
            },
            key,
            ROOT,
        ),
    ]
    if baseline is not None:
        before = {"server": server, "storage": {"data_dir": str(tmp / "before")}}
        variants.insert(0, ("fake (before)", before, None, baseline))
    servers = []
    for name, layers, bearer, cwd in variants:
        port = free_port()
        cmd = [sys.executable, "-c", FAKE_APP.replace("PORT", str(port))]
        env = {"BENCH_SETTINGS": json.dumps(layers)}
        servers.append(Server(name, cmd, port, env, bearer, cwd))
    return servers


async def _create_key(data_dir: Path) -> str:
    from vlmserve.storage.keys import KeyStore

    store = KeyStore.at(data_dir)
    try:
        return (await store.create("bench"))[1]
    finally:
        await store.db.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--model", type=Path, help="a dummy model dir (default: build tiny idefics3)"
    )
    parser.add_argument("--fake-only", action="store_true", help="skip the tiny-model pair")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose fake server runs too (before)"
    )
    args = parser.parse_args()

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = args.baseline.resolve() if args.baseline else None
        servers = await fake_servers(Path(tmp), baseline)
        rows.update(await measure(FakeEngine(), servers, args.requests, args.rounds))
    if args.fake_only:
        print_table(rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            # In a subprocess: torch work on this process's main thread as well as on the
            # engine's step thread would slow every step of the direct path (two OpenMP pools).
            model = Path(tmp) / "tiny"
            build = [sys.executable, "-m", "vlmserve", "make-dummy-model", str(model)]
            subprocess.run([*build, "--family", "idefics3", "--shape", "tiny"], check=True)  # noqa: ASYNC221 - set-up, before timing
        from vlmserve.engine.local.engine import LocalEngine

        engine = LocalEngine(EngineBinding(model=str(model)), EngineSettings())
        port = free_port()
        cmd = [sys.executable, "-m", "vlmserve", "serve", "--model", str(model)]
        env = {"VLMSERVE_STORAGE__DATA_DIR": str(Path(tmp) / "data")}
        local = Server("local", [*cmd, "--port", str(port)], port, env)
        rows.update(await measure(engine, [local], args.requests, args.rounds))

    print_table(rows)


def print_table(rows: dict[str, dict[str, float]]) -> None:
    print(
        "\n| engine | direct p50 ms | direct p99 ms | server p50 ms | server p99 ms "
        "| added p50 ms | added p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['direct_p50']:.3f} | {r['direct_p99']:.3f} | {r['server_p50']:.3f} | "
            f"{r['server_p99']:.3f} | {r['added_p50']:.3f} | {r['added_p99']:.3f} |"
        )


if __name__ == "__main__":
    # The same event loop as the server (uvicorn picks uvloop): with the stock asyncio loop the
    # direct path's cross-thread hand-offs from the engine's step thread measured ~10x slower here.
    import uvloop

    uvloop.run(main())
