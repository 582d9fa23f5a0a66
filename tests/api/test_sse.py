"""SSE framing: a failure after the first frame still ends the stream with [DONE]."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from vlmserve.api.sse import DONE, sse_frames
from vlmserve.errors import InternalError


class Item(BaseModel):
    n: int


async def failing(exc: Exception) -> AsyncIterator[BaseModel]:
    yield Item(n=1)
    raise exc


async def frames(items: AsyncIterator[BaseModel]) -> list[bytes]:
    return [frame async for frame in sse_frames(items)]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InternalError("Sampling failed for this request"), "internal_error"),
        (RuntimeError("boom"), "internal_error"),
    ],
)
def test_failure_mid_stream_is_an_error_event_then_done(exc: Exception, code: str) -> None:
    out = asyncio.run(frames(failing(exc)))
    assert out[0] == b'data: {"n":1}\n\n'
    assert out[-1] == DONE
    error = json.loads(out[1].removeprefix(b"data: "))["error"]
    assert error["code"] == code and error["message"]
    assert len(out) == 3
