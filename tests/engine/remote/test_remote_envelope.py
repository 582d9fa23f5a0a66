"""The call envelope: what the replica is asked to write for tools, and how vlmserve reads it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from vlmserve.engine.remote.envelope import (
    closed_schema,
    envelope_schema,
    read_envelope,
    response_format_for,
)
from vlmserve.engine.remote.stream import StreamState
from vlmserve.engine.types import (
    Delta,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Prompt,
    TextPart,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def request(tool_choice: Any = "auto", parallel: bool = True, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        "r",
        Prompt((Message("user", (TextPart("hi"),)),)),
        tools=(WEATHER, TIME),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        **fields,
    )


def valid(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


CALL = {"name": "get_weather", "arguments": {"city": "Oslo"}}


def test_named_choice_admits_exactly_one_call_of_that_tool() -> None:
    schema = envelope_schema(request({"type": "function", "function": {"name": "get_weather"}}))
    assert valid(schema, {"tool_calls": [CALL]})
    assert not valid(schema, {"tool_calls": [CALL, CALL]})
    assert not valid(schema, {"tool_calls": [{"name": "get_time", "arguments": {}}]})
    assert not valid(schema, {"content": "hello"})


def test_required_admits_calls_only_and_one_when_not_parallel() -> None:
    schema = envelope_schema(request("required"))
    assert valid(schema, {"tool_calls": [CALL, {"name": "get_time", "arguments": {}}]})
    assert not valid(schema, {"tool_calls": []})
    assert not valid(schema, {"content": "hello"})
    single = envelope_schema(request("required", parallel=False))
    assert not valid(single, {"tool_calls": [CALL, CALL]})


def test_arguments_must_match_their_tool_schema_closed() -> None:
    schema = envelope_schema(request("required"))
    assert not valid(schema, {"tool_calls": [{"name": "get_weather", "arguments": {}}]})
    bad_type = {"name": "get_weather", "arguments": {"city": "Oslo", "days": "Infinity"}}
    assert not valid(schema, {"tool_calls": [bad_type]})
    invented = {"name": "get_weather", "arguments": {"city": "Oslo", "mood": "sunny"}}
    assert not valid(schema, {"tool_calls": [invented]})
    assert not valid(schema, {"tool_calls": [{"name": "nope", "arguments": {}}]})


def test_auto_admits_an_answer_or_calls() -> None:
    schema = envelope_schema(request("auto"))
    assert valid(schema, {"content": "it is sunny"})
    assert valid(schema, {"tool_calls": [CALL]})
    assert not valid(schema, {"content": "x", "tool_calls": [CALL]})


def test_auto_with_json_mode_admits_the_json_answer_or_calls() -> None:
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    spec = {"type": "json_schema", "json_schema": {"name": "a", "schema": answer}}
    schema = envelope_schema(request("auto", response_format=spec))
    assert valid(schema, {"content": {"ok": True}})
    assert not valid(schema, {"content": {"ok": "yes"}})
    assert not valid(schema, {"content": "free text"})


def test_tool_choice_none_sends_no_envelope() -> None:
    assert response_format_for(request("none")) is None


def test_closed_schema_closes_listed_properties_and_leaves_open_ones_alone() -> None:
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"x": {"type": "number"}}}},
    }
    closed = closed_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert closed_schema({"type": "object"}) == {"type": "object"}  # any object
    kept = {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}
    assert closed_schema(kept) == kept


def test_read_envelope_gives_calls_with_fresh_ids_and_arguments_as_json() -> None:
    content, calls = read_envelope(json.dumps({"tool_calls": [CALL, CALL]}))
    assert content == ""
    assert [c.name for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id


def test_read_envelope_gives_a_text_or_json_answer_as_content() -> None:
    assert read_envelope('{"content": "sunny"}') == ("sunny", [])
    content, _ = read_envelope('{"content": {"ok": true}}')
    assert json.loads(content) == {"ok": True}


@pytest.mark.parametrize("cut", ['{"tool_calls": [{"name": "get_wea', '{"content": "sun'])
def test_an_envelope_cut_by_max_tokens_is_kept_as_text_not_dropped(cut: str) -> None:
    assert read_envelope(cut) == (cut, [])


def chunk(text: str, reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": reason}]}


def test_stream_holds_the_envelope_and_counts_its_tokens() -> None:
    state = StreamState(1, "http://r/v1", envelope=True)
    pieces = ['{"tool_calls": [', json.dumps(CALL), "]}"]
    deltas = [d for p in pieces[:-1] for d in state.feed(chunk(p))]
    deltas += state.feed(chunk(pieces[-1], "stop"))
    assert all(d.text == "" for d in deltas)
    assert sum(d.num_tokens for d in deltas) == 3
    *_, finished = state.finish()
    assert isinstance(finished, Finished) and finished.reason is FinishReason.TOOL_CALLS
    assert [c.name for c in finished.tool_calls] == ["get_weather"]


def test_stream_releases_an_envelope_answer_as_content() -> None:
    state = StreamState(1, "http://r/v1", envelope=True)
    state.feed(chunk('{"content": '))
    state.feed(chunk('"hello"}', "stop"))
    events = state.finish()
    assert Delta(0, "hello", 0) in events
    assert events[-1] == Finished(0, FinishReason.STOP)
