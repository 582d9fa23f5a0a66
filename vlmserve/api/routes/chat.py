"""``POST /v1/chat/completions``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from vlmserve.api.accounting import ChatAccount
from vlmserve.api.deps import IdentityDep, ServicesDep
from vlmserve.api.sse import sse_frames
from vlmserve.errors import VlmserveError
from vlmserve.protocol.chat import ChatCompletion, ChatCompletionRequest
from vlmserve.protocol.errors import ErrorResponse
from vlmserve.serving import assemble

router = APIRouter()
T = TypeVar("T")


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        400: {"model": ErrorResponse},
        429: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
    summary="Create a chat completion (text, images); streams SSE chunks when stream=true",
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, services: ServicesDep, identity: IdentityDep
) -> Response:
    account = ChatAccount.open(services, identity, body.model, request.scope["state"])
    reserve = account.reserve_tokens if account.needs_token_count else None
    try:
        run = await services.chat.start(body, identity.id, reserve)
    except VlmserveError as exc:
        if not account.is_finished:
            account.fail(exc)
        raise
    account.track(run)
    if body.stream:
        usage = assemble.StreamUsage.of(services.settings.server.stream_usage, body.stream_options)
        chunks = assemble.stream(run, usage)
        return StreamingResponse(
            sse_frames(chunks),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    completion = await _unless_disconnected(request, assemble.collect(run))
    if completion is None:
        await run.aclose()
        return Response(status_code=499)
    return Response(completion.model_dump_json(), media_type="application/json")


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; if the client hangs up first, cancel it (which aborts the generation)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
