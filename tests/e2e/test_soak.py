"""A short soak against a real server (tiny dummy model): 50 concurrent clients for about 30 s,
mixing text and image requests, streamed and not, some hanging up mid-stream. Zero 5xx, every
stream read to its end finishes with ``[DONE]`` (after an error event at worst), the engine is
idle again afterwards, and memory does not keep growing from the first half to the second."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.rss import rss_bytes
from tests.media.images import data_url, encode, gradient

NUM_CLIENTS = 50
SOAK_S = 30.0
MAX_RSS_GROWTH = 96 * 1024**2  # second half over first (after warm-up), plus 10 %
IMAGES = [data_url(encode(gradient(64 + 16 * i, 48, seed=i), "PNG")) for i in range(4)]


@dataclass
class Stats:
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    unterminated: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(dummy_models: dict[str, Path]) -> Iterator[ServerProcess]:
    proc = ServerProcess(dummy_models["qwen2_vl"])
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def body(rng: random.Random, stream: bool) -> dict[str, object]:
    content: object = f"Tell me about number {rng.randrange(1000)}."
    if rng.random() < 0.4:
        image = {"type": "image_url", "image_url": {"url": rng.choice(IMAGES)}}
        content = [{"type": "text", "text": "What is this?"}, image]
    return {
        "model": "step-1v-8k",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": rng.randint(2, 12),
        "temperature": rng.choice([0, 0.7, 1.0]),
        "stream": stream,
    }


async def streamed(client: httpx.AsyncClient, rng: random.Random, stats: Stats) -> None:
    hang_up = rng.random() < 0.25
    async with client.stream("POST", "/v1/chat/completions", json=body(rng, True)) as resp:
        stats.statuses[resp.status_code] += 1
        if resp.status_code != 200:
            stats.failures.append((await resp.aread()).decode()[:300])
            return
        last = ""
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                last = line
                if hang_up:  # leave after the first frame: the connection closes mid-answer
                    stats.kinds["hung up"] += 1
                    return
                if '"error"' in line:
                    stats.kinds["error event"] += 1
        if last != "data: [DONE]":
            stats.unterminated.append(last[:300])
        stats.kinds["stream"] += 1


async def plain(client: httpx.AsyncClient, rng: random.Random, stats: Stats) -> None:
    resp = await client.post("/v1/chat/completions", json=body(rng, False))
    stats.statuses[resp.status_code] += 1
    if resp.status_code != 200:
        stats.failures.append(resp.text[:300])
    stats.kinds["plain"] += 1


async def client_loop(base: str, seed: int, deadline: float, stats: Stats) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            await (streamed if rng.random() < 0.5 else plain)(client, rng, stats)


async def soak(server: ServerProcess, stats: Stats) -> tuple[int, int]:
    """Runs the clients; returns the server's RSS at half time and at the end."""
    started = time.monotonic()
    deadline = started + SOAK_S
    clients = [
        asyncio.create_task(client_loop(server.base_url, i, deadline, stats))
        for i in range(NUM_CLIENTS)
    ]
    await asyncio.sleep(SOAK_S / 2)
    rss_mid = rss_bytes(server.proc.pid)
    await asyncio.gather(*clients)
    return rss_mid, rss_bytes(server.proc.pid)


def wait_idle(server: ServerProcess, timeout_s: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        engines = httpx.get(server.base_url + "/readyz", timeout=5).json()["engines"]
        if all(e["running"] == 0 and e["waiting"] == 0 for e in engines.values()):
            return dict(engines)
        if time.monotonic() > deadline:
            raise AssertionError(f"the engine is not idle after the soak: {json.dumps(engines)}")
        time.sleep(0.2)


def test_soak_has_no_5xx_terminates_every_stream_and_does_not_grow(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    stats = Stats()
    rss_mid, rss_end = asyncio.run(soak(server, stats))
    with capsys.disabled():
        rss = f"rss {rss_mid >> 20} -> {rss_end >> 20} MB"
        print(f"\n[soak] {dict(stats.statuses)} {dict(stats.kinds)} {rss}")
    assert not [s for s in stats.statuses if s >= 500], (stats.statuses, stats.failures[:5])
    assert set(stats.statuses) == {200}, (stats.statuses, stats.failures[:5])
    assert stats.kinds["stream"] > NUM_CLIENTS and stats.kinds["plain"] > NUM_CLIENTS
    assert stats.kinds["hung up"] > 0
    assert not stats.unterminated, stats.unterminated[:5]
    wait_idle(server)
    assert rss_end - rss_mid < MAX_RSS_GROWTH + rss_mid // 10, (rss_mid >> 20, rss_end >> 20)
    after = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": "step-1v-8k",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert after.status_code == 200, after.text
