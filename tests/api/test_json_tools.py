"""JSON mode and tool calls over HTTP, on the fake engine: validation, shapes, streamed deltas.

The fake engine calls the tools the user text names (see tests/fakes.py); what the grammar
guarantees is tested on real models in tests/engine/local/test_grammar.py and tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.test_chat import MODEL, assert_error, chat, sse_events
from tests.conftest import LiveServer
from vlmserve.engine.types import Event, Finished, FinishReason, PromptUsage, ToolCall
from vlmserve.serving import assemble
from vlmserve.serving.chat import ChatRun

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"echo": {"type": "string"}}},
    },
}
CLOCK: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object"}},
}
ASK: Any = [{"role": "user", "content": "get_weather and get_time please"}]


def test_tool_calls_come_back_with_ids_empty_content_and_finish_reason(http: httpx.Client) -> None:
    resp = chat(http, messages=ASK, tools=[WEATHER, CLOCK])
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == ""  # Step's shape: "" (not null) when only calls
    names = [c["function"]["name"] for c in message["tool_calls"]]
    assert names == ["get_weather", "get_time"]  # parallel calls
    for call in message["tool_calls"]:
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert json.loads(call["function"]["arguments"]) == {"echo": ASK[0]["content"]}


def test_streamed_tool_calls_are_openai_deltas(http: httpx.Client) -> None:
    resp = chat(http, messages=ASK, tools=[WEATHER, CLOCK], stream=True)
    chunks = [json.loads(e) for e in sse_events(resp)[:-1]]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    first = deltas[0]
    assert first == {
        "index": 0,
        "id": first["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fragments = [d for d in deltas if "id" not in d]
    assert fragments and all(set(d) == {"index", "function"} for d in fragments)
    assert all(set(d["function"]) == {"arguments"} for d in fragments)
    assert {d["index"] for d in deltas} == {0, 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_sdk_stream_helper_reassembles_tool_calls(fake_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=fake_server.api, api_key="unused")
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=[WEATHER, CLOCK]
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [e.name for e in done] == ["get_weather", "get_time"]
    calls = final.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"echo": ASK[0]["content"]}] * 2
    assert final.choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_false_makes_one_call(http: httpx.Client) -> None:
    resp = chat(http, messages=ASK, tools=[WEATHER, CLOCK], parallel_tool_calls=False)
    assert len(resp.json()["choices"][0]["message"]["tool_calls"]) == 1


def test_named_and_none_tool_choices_reach_the_engine(http: httpx.Client) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    resp = chat(http, messages=ASK, tools=[WEATHER, CLOCK], tool_choice=named)
    calls = resp.json()["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert resp.json()["choices"][0]["finish_reason"] == "stop"  # OpenAI, for a named tool
    resp = chat(http, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="none")
    message = resp.json()["choices"][0]["message"]
    assert message["tool_calls"] is None and message["content"].startswith("echo:")


def test_a_tool_round_trip_answers_from_the_result(http: httpx.Client) -> None:
    first = chat(http, messages=ASK, tools=[WEATHER]).json()["choices"][0]["message"]
    call = first["tool_calls"][0]
    messages = [
        *ASK,
        first,
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny and 21C"},
    ]
    resp = chat(http, messages=messages, tools=[WEATHER])
    answer = resp.json()["choices"][0]
    assert answer["message"]["content"] == "echo: sunny and 21C"
    assert answer["finish_reason"] == "stop"


def test_a_tool_result_for_an_unknown_call_is_400(http: httpx.Client) -> None:
    messages = [*ASK, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}]
    assert_error(chat(http, messages=messages), 400, "messages[1].tool_call_id")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search", "function": {"description": "d"}}]}, "tools[0].type"),
        ({"tools": [{"type": "retrieval", "function": {"name": "kb"}}]}, "tools[0].type"),
        ({"tools": [WEATHER] * 129}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"not": {}}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_tools_and_formats_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    assert_error(chat(http, **body), 400, param, "request_params_invalid")


def test_builtin_tools_say_they_are_not_offered(http: httpx.Client) -> None:
    body = {"tools": [{"type": "web_search", "function": {"description": "d"}}]}
    assert "not offered" in assert_error(chat(http, **body), 400, "tools[0].type")["message"]


def test_json_mode_reaches_the_engine_normalized(
    http: httpx.Client, fake_server: LiveServer
) -> None:
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "e", "schema": schema, "strict": True}}
    resp = chat(http, response_format=fmt)
    assert json.loads(resp.json()["choices"][0]["message"]["content"]) == {"echo": "hi there"}
    assert fake_server.engine.requests[-1].response_format == fmt


# --- calls an engine reports whole (remote upstreams) ----------------------------------------


def whole_calls_run() -> ChatRun:
    calls = (ToolCall("call_a", "f", '{"x": 1}'), ToolCall("call_b", "g", "{}"))

    async def events() -> AsyncIterator[Event]:
        yield Finished(0, FinishReason.TOOL_CALLS, tool_calls=calls)

    return ChatRun("id", 0, MODEL, 1, PromptUsage(3), events())


def test_whole_calls_are_collected() -> None:
    completion = asyncio.run(assemble.collect(whole_calls_run()))
    message = completion.choices[0].message
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("call_a", "f", '{"x": 1}'),
        ("call_b", "g", "{}"),
    ]
    assert message.content == "" and completion.choices[0].finish_reason == "tool_calls"


def test_whole_calls_are_streamed_as_deltas_before_the_finish() -> None:
    async def chunks_of() -> list[dict[str, Any]]:
        return [c.model_dump() async for c in assemble.stream(whole_calls_run())]

    chunks = asyncio.run(chunks_of())
    calls = [c["choices"][0]["delta"].get("tool_calls") for c in chunks]
    assert calls[1:3] == [
        [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "f", "arguments": '{"x": 1}'},
            }
        ],
        [
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "g", "arguments": "{}"},
            }
        ],
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# --- token counts of requests with tools -----------------------------------------------------


def test_token_count_counts_the_tools_chat_bills(http: httpx.Client) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    fmt = {"type": "json_object"}
    for extra in ({}, {"tool_choice": "none"}, {"tool_choice": named, "response_format": fmt}):
        body: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": [WEATHER, CLOCK]}
        body.update(extra)
        counted = http.post("/v1/token/count", json=body).json()["data"]["total_tokens"]
        billed = chat(http, **{k: v for k, v in body.items() if k != "model"})
        assert counted == billed.json()["usage"]["prompt_tokens"], extra
    bare = http.post("/v1/token/count", json={"model": MODEL, "messages": ASK}).json()
    assert bare["data"]["total_tokens"] < counted


def test_token_count_refuses_what_chat_refuses(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": [{"type": "retrieval"}]}
    assert_error(http.post("/v1/token/count", json=body), 400, "tools[0].type")
    body = {"model": MODEL, "messages": ASK, "tool_choice": "required"}
    assert_error(http.post("/v1/token/count", json=body), 400, "tool_choice")
