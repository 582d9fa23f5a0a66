"""JSON mode and tool calls through a real server on dummy models, with the official SDK.

Random weights: every valid answer here is the grammar's doing.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
from pydantic import BaseModel, Field

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_server_process import MODEL, client, image_turn

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": NO_ARGUMENTS}},
]
ANSWER = {
    "type": "object",
    "properties": {"sunny": {"type": "boolean"}, "score": {"enum": [1, 2, 3]}},
    "required": ["sunny", "score"],
    "additionalProperties": False,
}


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    age: int = Field(ge=0, le=20)
    name: str = Field(max_length=5)
    vaccinated: bool


def test_sdk_parse_fills_a_pydantic_model(server: ServerProcess) -> None:
    reply = client(server).chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a pet as JSON."}],
        response_format=Pet,
        temperature=1,
        n=4,
        seed=5,
        max_tokens=120,
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Pet)


def test_streamed_tool_calls_reassemble_through_the_sdk(server: ServerProcess) -> None:
    with client(server).chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1,
        n=3,
        seed=6,
        max_tokens=120,
    ) as stream:
        final = stream.get_final_completion()
    for choice in final.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content in ("", None)
        (call,) = choice.message.tool_calls or []
        assert call.id.startswith("call_")
        if call.function.name == "get_weather":
            jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        else:
            assert json.loads(call.function.arguments) == {}


def test_tool_round_trip_with_an_image_then_a_json_answer(server: ServerProcess) -> None:
    sdk = client(server)
    messages: list[Any] = [
        image_turn("What is the weather where this photo was taken?", (0, 90, 200))
    ]
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    first = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice=named,
        temperature=1,
        seed=7,
        max_tokens=120,
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "stop" and message.content == ""  # named: OpenAI
    (call,) = message.tool_calls or []
    assert call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "temp_c": 21}'},
    ]
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": ANSWER, "strict": True},
    }
    second = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice="none",
        response_format=fmt,
        temperature=1,
        seed=8,
        max_tokens=60,
    )
    choice = second.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    jsonschema.validate(json.loads(choice.message.content or ""), ANSWER)
    details = second.usage.prompt_tokens_details if second.usage else None
    assert details is not None and details.image_tokens  # type: ignore[attr-defined]
    unknown = [*messages[:1], {"role": "tool", "tool_call_id": "call_x", "content": "?"}]
    try:
        sdk.chat.completions.create(model=MODEL, messages=unknown, tools=TOOLS)
    except openai.BadRequestError as exc:
        assert exc.body["param"] == "messages[1].tool_call_id"  # type: ignore[index]
    else:
        raise AssertionError("a tool result for an unknown call was accepted")


def test_streamed_json_with_two_choices_validates(server: ServerProcess) -> None:
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": ANSWER, "strict": True},
    }
    stream = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Rate it."}],
        response_format=fmt,
        stream=True,
        n=2,
        temperature=1,
        seed=9,
        max_tokens=60,
    )
    texts, reasons = ["", ""], [None, None]  # type: list[str], list[str | None]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert reasons == ["stop", "stop"]
    for text in texts:
        jsonschema.validate(json.loads(text), ANSWER)
