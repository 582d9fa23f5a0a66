"""The decoded-image cache and single-flight: bounded, content-keyed, collision-proof."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from vlmserve.media import cache
from vlmserve.media.cache import ImageCache, SingleFlight, TextKey
from vlmserve.media.types import PreparedImage


def prepared(side: int, tag: str = "x") -> PreparedImage:
    im = Image.new("RGB", (side, side))
    return PreparedImage(im, tag, "PNG", (side, side), (side, side), 10)


def test_cache_stays_within_its_byte_bound_evicting_least_recent() -> None:
    store = ImageCache(max_bytes=3 * (100 * 100 * 3 + 512))
    for i in range(3):
        store.put(("k", i), prepared(100, str(i)))
    assert store.get(("k", 0)) is not None  # 0 is now the most recent
    store.put(("k", 3), prepared(100, "3"))
    assert store.get(("k", 1)) is None
    assert store.get(("k", 0)) is not None and store.get(("k", 3)) is not None
    assert store.num_bytes <= 3 * (100 * 100 * 3 + 512)


def test_cache_skips_an_entry_larger_than_itself() -> None:
    store = ImageCache(max_bytes=1000)
    store.put("big", prepared(100))
    assert len(store) == 0


def test_text_key_counts_the_kept_text() -> None:
    store = ImageCache(max_bytes=10**6)
    store.put(TextKey("a" * 50_000, "s"), prepared(10))
    assert store.num_bytes >= 50_000


def test_hash_collision_text_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two data URLs whose fingerprints collide are still different keys."""
    monkeypatch.setattr(cache, "text_fingerprint", lambda text: b"same")
    first, second = (
        TextKey("data:image/png;base64,AAAA", 1),
        TextKey("data:image/png;base64,BBBB", 1),
    )
    assert hash(first) == hash(second) and first != second
    store = ImageCache(max_bytes=10**6)
    store.put(first, prepared(4, "first"))
    assert store.get(second) is None
    assert store.get(TextKey("data:image/png;base64,AAAA", 1)) is not None


def test_hash_collision_sizing() -> None:
    assert TextKey("same text", ("low", 512)) != TextKey("same text", ("high", 2048))


@pytest.mark.anyio
async def test_single_flight_waiter_runs_the_work_when_the_owner_is_cancelled() -> None:
    flight: SingleFlight[int] = SingleFlight()
    started = asyncio.Event()
    runs: list[str] = []

    async def slow(name: str) -> int:
        runs.append(name)
        started.set()
        await asyncio.sleep(0.05)
        return 7

    owner = asyncio.create_task(flight.run("k", lambda: slow("owner")))
    await started.wait()
    waiter = asyncio.create_task(flight.run("k", lambda: slow("waiter")))
    await asyncio.sleep(0)
    owner.cancel()
    assert await waiter == 7
    assert runs == ["owner", "waiter"]


@pytest.mark.anyio
async def test_single_flight_shares_a_failure_with_waiters() -> None:
    flight: SingleFlight[int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("bad image")

    results = await asyncio.gather(
        flight.run("k", fail), flight.run("k", fail), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
