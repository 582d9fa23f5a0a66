"""Server-sent events: ``data: {json}`` frames, keep-alive comments, ``data: [DONE]``.

A failure after the first frame (the engine fails one request mid-answer) cannot change the
status any more: it becomes an ``data: {"error": {...}}`` frame followed by ``[DONE]`` (vLLM's
framing), so every stream a client reads ends with ``[DONE]`` and says why it stopped early.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel

from vlmserve.api.errors import error_body
from vlmserve.errors import InternalError, VlmserveError

log = logging.getLogger("vlmserve.errors")

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
            except Exception as exc:
                yield b"data: " + error_body(_as_error(exc)) + b"\n\n"
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


def _as_error(exc: Exception) -> VlmserveError:
    if isinstance(exc, VlmserveError):
        return exc
    log.error("stream failed", exc_info=exc)
    return InternalError(f"The server failed while streaming this answer ({type(exc).__name__}).")
