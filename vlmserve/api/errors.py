"""The one place errors become HTTP responses (STYLE.md habit 5)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vlmserve.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    VlmserveError,
)
from vlmserve.protocol.errors import ErrorDetail, ErrorResponse

log = logging.getLogger("vlmserve.errors")

_TAGS = {"system", "user", "assistant", "tool", "text", "image_url", "video_url", "input_audio"}
_UNION_LABELS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def error_body(exc: VlmserveError) -> bytes:
    detail = ErrorDetail(message=exc.message, type=exc.type, code=exc.code, param=exc.param)
    return ErrorResponse(error=detail).model_dump_json().encode()


def error_response(exc: VlmserveError) -> Response:
    headers = None
    if exc.retryable and exc.status in (429, 503):
        # Rounded up: a client that waits the whole seconds it is told must then fit.
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s or 5)))}
    return Response(error_body(exc), exc.status, headers, media_type="application/json")


def param_of(loc: Sequence[int | str]) -> str | None:
    """``("body", "messages", 0, "user", "content", 1)`` → ``messages[0].content[1]``."""
    parts: list[str] = []
    previous: int | str | None = None
    for segment in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif not _is_union_label(segment, previous):
            parts.append(("." if parts else "") + segment)
        previous = segment
    return "".join(parts) or None


def _is_union_label(segment: str, previous: int | str | None) -> bool:
    return (
        "[" in segment
        or segment in _UNION_LABELS
        or segment[:1].isupper()
        or segment.startswith("function-")
        or (isinstance(previous, int) and segment in _TAGS)
    )


def validation_error(errors: Sequence[Any]) -> InvalidRequestError:
    if not errors:
        return InvalidRequestError("The request body is invalid.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", first["msg"])
        return InvalidRequestError(f"The request body is not valid JSON: {reason}.")
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") == "missing":
        return InvalidRequestError("The request body is missing: send a JSON object.")
    specific = _most_specific([(param_of(e.get("loc", ())), e["msg"]) for e in errors])
    messages = [f"{param or 'body'}: {msg}" for param, msg in specific[:3]]
    more = f" (and {len(specific) - 3} more problems)" if len(specific) > 3 else ""
    return InvalidRequestError(
        "Invalid request: " + "; ".join(messages) + more + ".", param=specific[0][0]
    )


def _most_specific(found: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """Drop a union branch's complaint ("should be a valid string") when another branch of the
    same field went deeper (``content[0].image_url: Field required``): that one says what to fix."""
    params = [p or "" for p, _ in found]
    keep = [
        (p, msg)
        for p, msg in found
        if not any(other != (p or "") and other.startswith(p or "") for other in params)
    ]
    return list(dict.fromkeys(keep)) or found


def install_error_handlers(app: FastAPI) -> None:
    async def on_vlmserve_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, VlmserveError)
        if exc.status >= 500:
            trace = request.scope.get("state", {}).get("trace_id", "")
            log.warning("%s %s trace=%s", exc.code, exc.message, trace)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        too_large = request.scope.get("state", {}).get("body_too_large")
        if too_large:  # the capped receive stopped a body without Content-Length
            return error_response(PayloadTooLargeError(too_large))
        if exc.status_code == 404:
            return error_response(NotFoundError(f"No route {request.url.path}; see /docs."))
        if exc.status_code == 405:
            err = InvalidRequestError(
                f"Method {request.method} is not allowed on {request.url.path}."
            )
            return Response(error_body(err), 405, media_type="application/json")
        err = InvalidRequestError(str(exc.detail))
        return Response(error_body(err), exc.status_code, media_type="application/json")

    app.add_exception_handler(VlmserveError, on_vlmserve_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
