"""The one error boundary: every httpx exception and upstream status maps to our tree."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from vlmserve.engine.remote.failures import (
    can_fail_over,
    error_for_status,
    is_unreachable,
    map_upstream_errors,
    retry_after,
    upstream_message,
)
from vlmserve.errors import (
    ContextLengthError,
    InvalidRequestError,
    TimeoutError_,
    UpstreamError,
    UpstreamOverloadedError,
    VlmserveError,
)


def all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found |= {sub, *all_subclasses(sub)}
    return found


HTTPX_ERRORS = sorted(
    (
        e
        for e in {httpx.HTTPError, httpx.InvalidURL, httpx.StreamError}
        | all_subclasses(httpx.HTTPError)
        | all_subclasses(httpx.StreamError)
        if e.__module__.startswith("httpx")
    ),
    key=lambda e: e.__name__,
)


def instance(cls: Any) -> Any:
    request = httpx.Request("POST", "http://r/v1/chat/completions")
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("bad", request=request, response=httpx.Response(500, request=request))
    if issubclass(cls, httpx.RequestError):
        return cls("bad", request=request)
    if issubclass(cls, httpx.StreamError):
        try:
            return cls()
        except TypeError:
            return cls("bad")
    return cls("bad")


@pytest.mark.parametrize("cls", HTTPX_ERRORS, ids=lambda c: c.__name__)
def test_every_httpx_exception_is_mapped(cls: type) -> None:
    with pytest.raises(VlmserveError) as info, map_upstream_errors("http://r/v1"):
        raise instance(cls)
    assert isinstance(info.value.__cause__, cls)


def test_connection_refused_is_unreachable_and_fails_over() -> None:
    with pytest.raises(UpstreamError) as info, map_upstream_errors("http://r/v1"):
        raise httpx.ConnectError("refused")
    assert is_unreachable(info.value) and can_fail_over(info.value)


def test_read_timeout_is_504_and_not_retried() -> None:
    with pytest.raises(TimeoutError_) as info, map_upstream_errors("http://r/v1"):
        raise httpx.ReadTimeout("slow")
    assert info.value.status == 504 and not can_fail_over(info.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (422, InvalidRequestError),
        (404, UpstreamError),
        (401, UpstreamError),
        (408, TimeoutError_),
        (429, UpstreamOverloadedError),
        (500, UpstreamError),
        (502, UpstreamError),
        (503, UpstreamOverloadedError),
        (504, TimeoutError_),
    ],
)
def test_status_codes_map_to_our_tree(status: int, cls: type) -> None:
    error = error_for_status(status, b'{"message": "m"}', {}, "http://r/v1")
    assert type(error) is cls


def test_upstream_reason_survives_in_our_message() -> None:
    vllm = b'{"object":"error","message":"image too large","type":"BadRequestError","code":400}'
    openai = b'{"error": {"message": "bad tool", "param": "tools"}}'
    assert upstream_message(vllm) == ("image too large", None)
    assert upstream_message(openai) == ("bad tool", "tools")
    assert upstream_message(b'{"detail": "Not Found"}') == ("Not Found", None)
    assert upstream_message(b"plain text") == ("plain text", None)
    error = error_for_status(400, openai, {}, "r")
    assert "bad tool" in error.message and error.param == "tools"


def test_context_errors_of_vllm_sglang_llamacpp_are_context_length_errors() -> None:
    for message in (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
        "The input (9000 tokens) is longer than the model's context length (8192 tokens).",
        "the request exceeds the available context size, try increasing it",
    ):
        body = json.dumps({"message": message}).encode()
        assert isinstance(error_for_status(400, body, {}, "r"), ContextLengthError)


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after({"retry-after": "12"}) == 12.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
