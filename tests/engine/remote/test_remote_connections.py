"""Upstream connections: reused from request to request, and hung up when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from tests.engine.remote.builders import collect, running_engine, text_request
from tests.engine.remote.upstream import UpstreamServer
from vlmserve.engine.types import Event, Started

pytestmark = pytest.mark.anyio


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def framer(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """What ``api/sse.py`` does: the next event is awaited in a task of its own."""
    pending: asyncio.Future[Event] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(events))
            await asyncio.wait((pending,))
            event, pending = pending.result(), None
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await events.aclose()  # type: ignore[attr-defined]


async def test_disconnected_client_hangs_up_on_the_replica_and_frees_the_slot(
    replicas: list[UpstreamServer],
) -> None:
    """Starlette cancels a disconnected client's response in an anyio cancel scope, which
    re-cancels the task at every await while it unwinds, and each re-cancel reached the task
    reading the replica in the middle of httpx's clean-up. Cut short there, the upstream
    connection stayed open: the replica generated on for nobody and the pool slot was never
    given back."""
    for r in replicas:
        r.upstream.behaviour.chunk_delay_s = 0.2
    received: list[Event] = []
    async with running_engine(replicas) as engine:
        async with anyio.create_task_group() as tasks:

            async def respond() -> None:
                async for event in framer(engine.generate(text_request("more"))):
                    received.append(event)

            tasks.start_soon(respond)
            await wait_for(lambda: len(received) >= 2)
            tasks.cancel_scope.cancel()
        await wait_for(lambda: sum(r.upstream.aborted for r in replicas) == 1)
        await wait_for(lambda: all(r.num_outstanding == 0 for r in engine.pool.replicas))
        pool = engine._client._transport._pool  # type: ignore[union-attr,attr-defined]
        assert all(c.is_idle() or c.is_closed() for c in pool.connections)
    assert isinstance(received[0], Started)


async def test_connection_is_reused_from_request_to_request(
    replicas: list[UpstreamServer],
) -> None:
    """A stream left unread after ``[DONE]`` (the chunked body's last chunk) cost every request
    a new connection to the replica."""
    async with running_engine(replicas[:1], health_interval_s=60) as engine:
        for i in range(5):
            await collect(engine, text_request(f"question {i}"))
        pool = engine._client._transport._pool  # type: ignore[union-attr,attr-defined]
        counts = [int(c.info().rpartition(" ")[2]) for c in pool.connections]
    # The first health check may run beside the first request, on a connection of its own.
    assert sum(counts) == 6 and max(counts) >= 5, counts
