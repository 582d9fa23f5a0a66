"""The OpenAI wire details that client libraries rely on, pinned on real server processes.

LangChain and pydantic-ai add up the ``usage`` of every chunk; instructor sends ``json_schema``
without ``strict``; agents branch on ``finish_reason``; budgeting code calls ``/v1/token/count``
with the chat body. Each target is a real ``vlmserve serve``: the two dummy families, and a front
in remote mode over a vlmserve replica (the front asks the replica for running usage and reshapes
it to what its own client asked). Raw SSE where the SDK would hide the framing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import ServeProcess
from tests.e2e.test_server_process import MODEL, client, image_turn
from tests.engine.local.test_grammar import is_compact

TARGETS = ("idefics3", "qwen2_vl", "remote")
PICK = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "blue"]},
        "size": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["color", "size"],
}  # no additionalProperties, and sent without strict: still closed
WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time"}},
]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest, dummy_models: dict[str, Path]) -> Iterator[ServeProcess]:
    if request.param == "remote":
        model = dummy_models["qwen2_vl"]
        replica = ServeProcess(model)
        upstream = ["--upstream", replica.api, "--upstream-model", MODEL]
        procs = [replica, ServeProcess(model, upstream)]
    else:
        procs = [ServeProcess(dummy_models[request.param])]
    try:
        for proc in procs:
            proc.wait_ready()
        yield procs[-1]
    finally:
        for proc in procs:
            proc.stop()


def sse(target: ServeProcess, **body: Any) -> list[dict[str, Any]]:
    """The chunks of a raw streamed request; asserts the framing ends with ``[DONE]``."""
    payload = {"model": MODEL, "messages": ASK, "max_tokens": 5, "stream": True, **body}
    with httpx.stream("POST", target.api + "/chat/completions", json=payload, timeout=120) as r:
        assert r.status_code == 200, r.read()
        data = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


# -- streamed usage ---------------------------------------------------------------------------


def test_streamed_usage_is_null_on_every_chunk_by_default(target: ServeProcess) -> None:
    chunks = sse(target)
    assert chunks and all("usage" in c and c["usage"] is None for c in chunks)
    assert all(c["choices"] for c in chunks)  # no usage-only chunk unless asked


def test_include_usage_sends_the_totals_once_in_a_last_chunk(target: ServeProcess) -> None:
    messages: Any = [image_turn("What is this?", (200, 30, 30))]
    sdk = client(target)
    reply = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, seed=3)
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=6,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    *content, last = list(stream)
    assert all(c.usage is None and c.choices for c in content)
    assert last.choices == [] and last.usage is not None and reply.usage is not None
    assert last.usage.prompt_tokens == reply.usage.prompt_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert 0 < last.usage.completion_tokens <= 6
    details = last.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert 0 < details.image_tokens < last.usage.prompt_tokens  # type: ignore[attr-defined]
    assert details.video_tokens == 0  # type: ignore[attr-defined]
    assert last.usage.cached_tokens == details.cached_tokens  # type: ignore[attr-defined]
    # what LangChain and pydantic-ai do with a stream: add up every chunk's usage
    summed = sum(c.usage.prompt_tokens for c in [*content, last] if c.usage is not None)
    assert summed == reply.usage.prompt_tokens


def test_continuous_usage_stats_gives_running_totals_on_every_chunk(target: ServeProcess) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = sse(target, stream_options=options, max_tokens=6)
    usages = [c["usage"] for c in chunks]
    assert all(u is not None for u in usages)
    assert len({u["prompt_tokens"] for u in usages}) == 1
    completion = [u["completion_tokens"] for u in usages]
    assert completion == sorted(completion) and 0 < completion[-1] <= 6
    assert chunks[-1]["choices"] == [] and usages[-1] == usages[-2]


# -- JSON -------------------------------------------------------------------------------------


def test_json_schema_without_strict_is_enforced_closed(target: ServeProcess) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "pick", "schema": PICK}}
    reply = client(target).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Pick one."}],
        response_format=fmt,
        n=8,
        temperature=1,
        seed=4,
        max_tokens=40,
    )
    closed = {**PICK, "additionalProperties": False}
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), closed)


def test_json_and_tool_arguments_come_compact(target: ServeProcess) -> None:
    sdk = client(target)
    reply = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Any JSON object."}],
        response_format={"type": "json_object"},
        n=3,
        temperature=1,
        seed=5,
        max_tokens=30,
    )
    for choice in reply.choices:
        text = choice.message.content or ""
        assert text.startswith("{") and is_compact(text), repr(text)
    calls = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice=NAMED,
        n=2,
        temperature=1,
        seed=6,
        max_tokens=60,
    )
    for choice in calls.choices:
        (call,) = choice.message.tool_calls or []
        arguments = call.function.arguments  # type: ignore[union-attr]
        assert is_compact(arguments), repr(arguments)
        jsonschema.validate(json.loads(arguments), WEATHER)


# -- finish_reason ----------------------------------------------------------------------------


def test_finish_reasons_are_openais(target: ServeProcess) -> None:
    sdk = client(target)
    common: Any = {"model": MODEL, "messages": ASK, "tools": TOOLS, "temperature": 1, "seed": 7}
    named = sdk.chat.completions.create(tool_choice=NAMED, max_tokens=60, **common)
    assert named.choices[0].finish_reason == "stop" and named.choices[0].message.tool_calls
    stream = sdk.chat.completions.create(tool_choice=NAMED, max_tokens=60, stream=True, **common)
    reasons = [c.choices[0].finish_reason for c in stream if c.choices]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    required = sdk.chat.completions.create(
        tool_choice="required", parallel_tool_calls=False, max_tokens=60, **common
    )
    assert required.choices[0].finish_reason == "tool_calls"
    cut = sdk.chat.completions.create(tool_choice="required", max_tokens=3, **common)
    assert cut.choices[0].finish_reason == "length"  # the limit cut it, calls or not
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "pick", "schema": PICK}}
    cut_json = sdk.chat.completions.create(
        model=MODEL, messages=ASK, response_format=fmt, max_tokens=2
    )
    assert cut_json.choices[0].finish_reason == "length"


# -- token count ------------------------------------------------------------------------------


def test_token_count_of_a_chat_body_with_tools_is_what_chat_bills(target: ServeProcess) -> None:
    body: Any = {
        "model": MODEL,
        "messages": [image_turn("Weather where this was taken?", (0, 90, 200))],
        "tools": TOOLS,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "max_tokens": 2,
    }
    counted = httpx.post(target.api + "/token/count", json=body, timeout=120)
    assert counted.status_code == 200, counted.text
    reply = client(target).chat.completions.create(**body)
    assert reply.usage is not None
    assert counted.json()["data"]["total_tokens"] == reply.usage.prompt_tokens
    bare = {"model": MODEL, "messages": body["messages"]}
    without = httpx.post(target.api + "/token/count", json=bare, timeout=120).json()["data"]
    assert without["total_tokens"] < reply.usage.prompt_tokens
