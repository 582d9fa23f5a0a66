"""Server-sent events: ``data: {json}`` frames, keep-alive comments, ``data: [DONE]``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


async def sse_frames(
    items: AsyncIterator[BaseModel], keepalive_s: float = 15.0
) -> AsyncIterator[bytes]:
    """Frame ``items``; a comment every ``keepalive_s`` of silence keeps proxies from hanging up.

    Closing this generator (client disconnect) closes ``items``, which aborts the generation.
    """
    pending: asyncio.Task[BaseModel] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait((pending,), timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            yield b"data: " + item.model_dump_json().encode() + b"\n\n"
        yield DONE
    finally:
        if pending is not None:
            pending.cancel()
            # asyncio.wait, not ``await pending``: a second cancellation of this task (the server
            # tearing the response down) must not be forwarded into the engine's clean-up.
            await asyncio.wait((pending,))
            if not pending.cancelled():
                pending.exception()  # retrieved, so never reported as lost
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
