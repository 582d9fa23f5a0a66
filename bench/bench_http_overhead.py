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


def start_server(
    cmd: list[str], port: int, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLMSERVE_SERVER__LOG_LEVEL": "warning",
        **(env_extra or {}),
    }
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def wait_ready(engine: EngineClient) -> None:
    await engine.start()
    while not (await engine.health()).ready:  # noqa: ASYNC110 - polling the engine's own API
        await asyncio.sleep(0.1)


async def measure_pair(
    name: str,
    engine: EngineClient,
    server_cmd: list[str],
    port: int,
    n: int,
    rounds: int,
    env: dict[str, str] | None = None,
    key: str | None = None,
) -> dict[str, float]:
    await wait_ready(engine)
    proc = start_server(server_cmd, port, env)
    direct_p50, server_p50, direct_p99, server_p99, added = [], [], [], [], []
    try:
        for _ in range(rounds):
            d = await timed(n, direct_call(engine))
            async with RawClient(
                port, key
            ) as client:  # fresh: uvicorn drops idle keep-alives after 5 s
                s = await timed(n, http_call(client))
            direct_p50.append(percentile(d, 0.5))
            server_p50.append(percentile(s, 0.5))
            direct_p99.append(percentile(d, 0.99))
            server_p99.append(percentile(s, 0.99))
            added.append(percentile(s, 0.5) - percentile(d, 0.5))
    finally:
        proc.terminate()
        proc.wait()
        await engine.close()
    med = statistics.median
    row = {
        "direct_p50": med(direct_p50),
        "direct_p99": med(direct_p99),
        "server_p50": med(server_p50),
        "server_p99": med(server_p99),
        "added_p50": med(added),
        "added_p99": med(server_p99) - med(direct_p99),
    }
    print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    return row


async def fake_variants(tmp: Path) -> list[tuple[str, dict[str, Any], str | None]]:
    """(name, settings layers, API key) of each fake-engine server."""
    open_dir, keys_dir = str(tmp / "open"), str(tmp / "keys")
    key = await _create_key(Path(keys_dir))
    server = {"log_level": "warning"}
    tier = {"concurrency": 1000, "rpm": 10**7, "tpm": 10**12}
    return [
        ("fake", {"server": server, "storage": {"data_dir": open_dir}}, None),
        (
            "fake+keys",
            {
                "server": server,
                "storage": {"data_dir": keys_dir},
                "limits": {"tiers": {"bench": tier}, "default_tier": "bench"},
            },
            key,
        ),
    ]


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
    args = parser.parse_args()

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, layers, key in await fake_variants(Path(tmp)):
            port = free_port()
            fake_cmd = [sys.executable, "-c", FAKE_APP.replace("PORT", str(port))]
            env = {"BENCH_SETTINGS": json.dumps(layers)}
            rows[name] = await measure_pair(
                name, FakeEngine(), fake_cmd, port, args.requests, args.rounds, env, key
            )

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
        cmd = [
            sys.executable,
            "-m",
            "vlmserve",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
        ]
        env = {"VLMSERVE_STORAGE__DATA_DIR": str(Path(tmp) / "data")}
        rows["local"] = await measure_pair(
            "local", engine, cmd, port, args.requests, args.rounds, env
        )

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
