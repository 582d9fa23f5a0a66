"""The one boundary where upstream failures become vlmserve errors (STYLE.md habit 6).

Transport failures (httpx exceptions) go through ``map_upstream_errors()``; HTTP answers that are
not a stream go through ``error_for_status()``; error objects inside a stream through
``error_for_body()``. What may be retried on another replica is decided by ``can_fail_over``.

    connect refused / connect timeout   → UpstreamError 502 (replica unreachable: marked down)
    connection dropped, bad framing     → UpstreamError 502
    no byte for read_timeout_s          → TimeoutError_ 504
    our connection pool exhausted       → UpstreamOverloadedError 503
    429 / 503                           → UpstreamOverloadedError 503 with Retry-After
    408 / 504                           → TimeoutError_ 504
    401 / 403 / 404                     → UpstreamError 502 (our configuration, not the request)
    other 4xx                           → InvalidRequestError 400 (ContextLengthError when it is
                                          about the context) with the upstream's message
    5xx                                 → UpstreamError 502
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from vlmserve.errors import (
    ContextLengthError,
    InvalidRequestError,
    TimeoutError_,
    UpstreamError,
    UpstreamOverloadedError,
    VlmserveError,
)

MAX_MESSAGE_CHARS = 1000
_CONTEXT = re.compile(r"context (length|size|window)|max_model_len", re.IGNORECASE)
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)


@contextmanager
def map_upstream_errors(replica: str) -> Iterator[None]:
    """Re-raise any httpx exception raised inside as the vlmserve error it means."""
    try:
        yield
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise error_for_exception(exc, replica) from exc


def error_for_exception(exc: Exception, replica: str) -> VlmserveError:
    if isinstance(exc, _UNREACHABLE):
        return UpstreamError(f"The model server {replica} is unreachable ({_describe(exc)}).")
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamOverloadedError(
            "Every connection to the model servers is busy; retry shortly.", retry_after_s=1.0
        )
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError_(f"The model server {replica} did not answer in time; retry later.")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return UpstreamError(
            f"The connection to the model server {replica} broke ({_describe(exc)})."
        )
    return UpstreamError(f"Talking to the model server {replica} failed ({_describe(exc)}).")


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def is_unreachable(error: VlmserveError) -> bool:
    """The replica could not be connected to at all (mark it down until a health check passes)."""
    return isinstance(error.__cause__, _UNREACHABLE)


def can_fail_over(error: VlmserveError) -> bool:
    """Another replica may well succeed where this one failed (nothing was streamed yet)."""
    return isinstance(error, UpstreamError | UpstreamOverloadedError) and not isinstance(
        error.__cause__, httpx.PoolTimeout
    )


def error_for_status(
    status: int, body: bytes, headers: Mapping[str, str], replica: str
) -> VlmserveError:
    message, param = upstream_message(body)
    if status in (429, 503):
        return UpstreamOverloadedError(
            f"The model server is overloaded ({status}: {message}); retry later.",
            retry_after_s=retry_after(headers),
        )
    if status in (408, 504):
        return TimeoutError_(f"The model server timed out ({status}: {message}); retry later.")
    if status in (401, 403, 404):
        return UpstreamError(
            f"The model server {replica} refused the request ({status}: {message}); "
            "check the remote engine's configuration (replica URL, model name, API key)."
        )
    if 400 <= status < 500:
        return invalid_request(message, param)
    return UpstreamError(f"The model server {replica} failed ({status}: {message}).")


def error_for_body(body: Mapping[str, Any], replica: str) -> VlmserveError:
    """An error object sent inside a 200 stream (vLLM: ``data: {"error": {...}}``)."""
    inner = body.get("error")
    error = inner if isinstance(inner, Mapping) else body
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return error_for_status(status, json.dumps(body).encode(), {}, replica)


def invalid_request(message: str, param: str | None) -> InvalidRequestError:
    text = f"{message} (reported by the model server)"
    if _CONTEXT.search(message):
        return ContextLengthError(text, param=param or "messages")
    return InvalidRequestError(text, param=param)


def upstream_message(body: bytes) -> tuple[str, str | None]:
    """The human message and ``param`` of an OpenAI, vLLM, SGLang or FastAPI error body."""
    try:
        data = json.loads(body)
    except ValueError:
        return _clip(body.decode("utf-8", "replace").strip() or "no message"), None
    if not isinstance(data, dict):
        return _clip(str(data)), None
    inner = data.get("error")
    error = inner if isinstance(inner, dict) else data
    message = error.get("message") or error.get("detail") or data.get("detail") or str(data)
    param = error.get("param")
    return _clip(str(message)), param if isinstance(param, str) else None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
