"""Pure ASGI middleware (no task per request, unlike BaseHTTPMiddleware): trace id, body cap,
rate-limit headers, the access log line."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.errors import error_body
from vlmserve.errors import InternalError, PayloadTooLargeError, VlmserveError

log = logging.getLogger("vlmserve.access")

TRACE_HEADER = b"x-trace-id"


class TraceMiddleware:
    """Gives every request an ``X-Trace-Id`` (in the response, the log line and 5xx messages)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, path_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = path_limits or {}  # e.g. uploads: a larger cap on POST /v1/files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = os.urandom(16).hex()
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["trace_id"] = trace_id
        state["arrived"] = started
        status = 0

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (TRACE_HEADER, trace_id.encode())]
                limits = state.get("ratelimit")  # set once the caller's key is known
                if limits is not None:
                    headers += limits.headers(time.monotonic())
                message["headers"] = headers
            await send(message)

        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        try:
            if self._declared_too_large(scope, limit):
                await self._send_error(send_with_trace, PayloadTooLargeError(_too_large(limit)))
            else:
                await self.app(scope, self._capped(scope, receive, limit), send_with_trace)
        except Exception:
            # A bug: answer 500 with the trace id (inside this middleware, so the header is set).
            log.exception("unhandled error, trace=%s", trace_id)
            if status:
                raise
            message = f"Internal server error; quote trace id {trace_id} when reporting it."
            await self._send_error(send_with_trace, InternalError(message))
        finally:
            account = state.get("account")
            if account is not None:  # a chat request nothing ended: the client went away
                account.abandon(status)
            if log.isEnabledFor(logging.INFO):
                access_log(scope, state, status, (time.perf_counter() - started) * 1000)

    @staticmethod
    def _declared_too_large(scope: Scope, limit: int) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value) > limit
                except ValueError:
                    return False
        return False

    @staticmethod
    def _capped(scope: Scope, receive: Receive, limit: int) -> Receive:
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # The framework turns any error while reading into a 400; the flag lets the
                    # error handler answer 413 instead.
                    scope["state"]["body_too_large"] = _too_large(limit)
                    raise PayloadTooLargeError(_too_large(limit))
            return message

        return capped

    @staticmethod
    async def _send_error(send: Send, exc: VlmserveError) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": exc.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": error_body(exc)})


def access_log(scope: Scope, state: dict[str, Any], status: int, ms: float) -> None:
    """One line per request. Only the path (never the query string), the key's name (never the
    key): nothing a client sent in its body, so no image bytes, data URLs or URL credentials."""
    fields = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "model": state.get("model"),
        "prompt_tokens": state.get("prompt_tokens"),
        "completion_tokens": state.get("completion_tokens"),
        "latency_ms": round(ms, 2),
        "trace_id": state["trace_id"],
        "key_name": state.get("key_name"),
    }
    tokens = ""
    if fields["prompt_tokens"] is not None:
        tokens = f" tokens={fields['prompt_tokens']}+{fields['completion_tokens']}"
    model = f" model={fields['model']}" if fields["model"] else ""
    key = f" key={fields['key_name']}" if fields["key_name"] else ""
    log.info(
        "%s %s %d %.1fms%s%s%s trace=%s",
        scope["method"],
        scope["path"],
        status,
        ms,
        model,
        tokens,
        key,
        state["trace_id"],
        extra={"access": fields},
    )


def _too_large(limit: int) -> str:
    return (
        f"The request body is larger than {limit // (1024 * 1024)} MB. Send large images and "
        "videos as http(s) URLs or upload them with the Files API."
    )
