"""Request bodies are bounded before any field is read: depth, valid Unicode, schema size."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vlmserve.protocol.chat import ChatCompletionRequest
from vlmserve.protocol.limits import MAX_JSON_DEPTH, MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES
from vlmserve.protocol.tokens import TokenCountRequest


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def refusal(body: dict[str, Any], model: type = ChatCompletionRequest) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    error: dict[str, Any] = info.value.errors()[0]
    return error


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def schema_nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[{"role": "user", "content": "ok \ud800"}]), "messages[0].content"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
            "messages[0].content[0].text",
        ),
        (chat(model="\ud800"), "model"),
        (chat(stop=["fine", "x\udc00"]), "stop[1]"),
        (chat(user="\ud83d"), "user"),
        (
            chat(tools=[{"type": "function", "function": {"name": "f", "description": "\ud800"}}]),
            "tools[0].function.description",
        ),
        (chat(unknown={"\ud800key": 1}), "unknown.\\ud800key"),
    ],
)
def test_lone_surrogate_anywhere_is_refused_naming_its_field(
    body: dict[str, Any], param: str
) -> None:
    error = refusal(body)
    assert error["type"] == "invalid_unicode"
    assert error["ctx"]["param"] == param
    assert "surrogate" in error["msg"]


def test_lone_surrogate_in_token_count_is_refused() -> None:
    error = refusal(
        {"model": "m", "messages": [{"role": "user", "content": "\ud800"}]}, TokenCountRequest
    )
    assert error["ctx"]["param"] == "messages[0].content"


def test_surrogate_pairs_and_other_unicode_pass() -> None:
    req = ChatCompletionRequest.model_validate(
        chat(messages=[{"role": "user", "content": "é😀中"}])
    )
    assert req.messages[0].content == "é😀中"


def test_nesting_deeper_than_the_limit_is_refused_without_recursing() -> None:
    error = refusal(chat(extra=nested(100_000)))  # a recursive walk would overflow the stack
    assert error["type"] == "json_too_deep"
    assert str(MAX_JSON_DEPTH) in error["msg"]
    assert error["ctx"]["param"].startswith("extra[0][0]")


def test_nesting_at_the_limit_passes() -> None:
    ChatCompletionRequest.model_validate(chat(extra=nested(MAX_JSON_DEPTH - 2)))


def test_schema_deeper_than_the_limit_is_refused_saying_the_limit() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema_nested(20)}}
    error = refusal(chat(response_format=rf))
    assert error["type"] == "json_too_deep"
    assert f"at most {MAX_SCHEMA_DEPTH} levels" in error["msg"]
    assert error["loc"] == ("response_format", "json_schema", "schema")


def test_tool_parameters_with_too_many_values_are_refused_saying_the_limit() -> None:
    props = {f"p{i}": {"type": "string"} for i in range(MAX_SCHEMA_NODES)}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": props}}}
    error = refusal(chat(tools=[tool]))
    assert error["type"] == "json_too_large"
    assert str(MAX_SCHEMA_NODES) in error["msg"]


def test_ordinary_schema_passes() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema_nested(10)}}
    ChatCompletionRequest.model_validate(chat(response_format=rf))


@pytest.mark.parametrize("field", ["temperature", "top_p", "frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_not_numbers(field: str, value: float) -> None:
    error = refusal(chat(**{field: value}))
    assert error["loc"] == (field,)


@pytest.mark.parametrize("seed", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_seed_outside_the_signed_64_bit_range_is_refused(seed: int) -> None:
    assert refusal(chat(seed=seed))["loc"] == ("seed",)


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 0, -1])
def test_seed_inside_the_signed_64_bit_range_passes(seed: int) -> None:
    assert ChatCompletionRequest.model_validate(chat(seed=seed)).seed == seed


def replayed_call(arguments: str) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return chat(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    )


@pytest.mark.parametrize(
    ("arguments", "kind", "inner"),
    [
        ('{"a": "\\ud800"}', "invalid_unicode", "[0].function.arguments.a"),
        ('"\\udc00"', "invalid_unicode", "[0].function.arguments"),
        ("[" * 5000 + "]" * 5000, "json_too_deep", "[0].function.arguments"),
        ('{"a": ' + "[" * 100 + "]" * 100 + "}", "json_too_deep", "[0].function.arguments.a"),
    ],
)
def test_replayed_tool_call_arguments_are_bounded_once_parsed(
    arguments: str, kind: str, inner: str
) -> None:
    """The engine parses a replayed call's arguments: escaped surrogates and deep nesting hidden
    in the JSON text would reach the tokenizer or overflow the parser."""
    error = refusal(replayed_call(arguments))
    assert error["type"] == kind
    assert error["loc"][-1] == "tool_calls"
    assert error["ctx"]["param"].startswith(inner)


@pytest.mark.parametrize("arguments", ['{"city": "Paris"}', "not JSON at all", ""])
def test_ordinary_or_non_json_arguments_pass(arguments: str) -> None:
    ChatCompletionRequest.model_validate(replayed_call(arguments))
