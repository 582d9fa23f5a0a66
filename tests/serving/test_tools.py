"""Output constraints: tool and schema validation, normalization, and tool-call history."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from vlmserve.errors import InvalidRequestError
from vlmserve.protocol.chat import ChatCompletionRequest
from vlmserve.serving.tools import (
    MAX_TOOLS,
    check_schema,
    check_tool_history,
    output_constraints,
)

OBJECT = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def req(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def tool(name: str = "search", parameters: Any = OBJECT, kind: str = "function") -> dict[str, Any]:
    function = (
        {"name": name, "parameters": parameters} if parameters is not None else {"name": name}
    )
    return {"type": kind, "function": function}


def refused(param: str, **fields: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        output_constraints(req(**fields))
    assert info.value.param == param, info.value.message
    return info.value.message


# --- tools -----------------------------------------------------------------------------------


def test_tools_are_normalized_with_auto_choice() -> None:
    out = output_constraints(req(tools=[tool(parameters=None)]))
    assert out.tools == (
        {
            "type": "function",
            "function": {"name": "search", "parameters": {"type": "object", "properties": {}}},
        },
    )
    assert out.tool_choice == "auto" and out.parallel_tool_calls


def test_more_than_128_tools_are_refused() -> None:
    tools = [tool(f"t{i}") for i in range(MAX_TOOLS + 1)]
    assert "at most 128" in refused("tools", tools=tools)
    assert output_constraints(req(tools=tools[:MAX_TOOLS])).tools is not None


@pytest.mark.parametrize("name", ["1abc", "a b", "x" * 65, "é", "a.b", ""])
def test_tool_names_outside_the_pattern_are_refused(name: str) -> None:
    param = "tools[0].function" if not name else "tools[0].function.name"
    refused(param, tools=[tool(name)])


@pytest.mark.parametrize("name", ["_a", "a-b_c", "x" * 64, "Z9"])
def test_tool_names_inside_the_pattern_are_accepted(name: str) -> None:
    assert output_constraints(req(tools=[tool(name)])).tools


@pytest.mark.parametrize("kind", ["web_search", "retrieval"])
def test_step_builtin_tools_are_refused_as_not_offered(kind: str) -> None:
    message = refused(
        "tools[1].type", tools=[tool(), {"type": kind, "function": {"description": "d"}}]
    )
    assert "not offered" in message


def test_unknown_tool_types_are_refused() -> None:
    assert "only 'function'" in refused("tools[0].type", tools=[tool(kind="code_interpreter")])


@pytest.mark.parametrize("parameters", [{"type": "array"}, {"properties": {}}, {"type": "string"}])
def test_parameters_not_rooted_at_an_object_are_refused(parameters: dict[str, Any]) -> None:
    refused("tools[0].function.parameters", tools=[tool(parameters=parameters)])


def test_duplicate_tool_names_are_refused() -> None:
    refused("tools[1].function.name", tools=[tool("a"), tool("a")])


def test_named_choice_must_be_a_declared_tool() -> None:
    choice = {"type": "function", "function": {"name": "other"}}
    refused("tool_choice.function.name", tools=[tool()], tool_choice=choice)
    choice["function"]["name"] = "search"
    assert output_constraints(req(tools=[tool()], tool_choice=choice)).tool_choice == choice


def test_tool_choice_without_tools_is_refused_unless_none() -> None:
    refused("tool_choice", tool_choice="required")
    assert output_constraints(req(tool_choice="none")).tool_choice is None


def test_parallel_tool_calls_false_is_carried() -> None:
    out = output_constraints(req(tools=[tool()], parallel_tool_calls=False))
    assert out.parallel_tool_calls is False


# --- response_format -------------------------------------------------------------------------


def test_response_formats_are_normalized() -> None:
    assert output_constraints(req(response_format={"type": "text"})).response_format is None
    fmt = output_constraints(req(response_format={"type": "json_object"})).response_format
    assert fmt == {"type": "json_object"}


@pytest.mark.parametrize("strict", [None, False, True])
def test_a_schema_is_enforced_closed_with_or_without_strict(strict: bool | None) -> None:
    spec: dict[str, Any] = {"name": "n", "schema": OBJECT}
    if strict is not None:
        spec["strict"] = strict
    schema_format = {"type": "json_schema", "json_schema": spec}
    fmt = output_constraints(req(response_format=schema_format)).response_format
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": OBJECT, "strict": True},
    }


def test_json_schema_without_a_schema_is_refused() -> None:
    refused("response_format.json_schema", response_format={"type": "json_schema"})


# --- JSON Schema features --------------------------------------------------------------------

S: dict[str, Any] = {"type": "string"}
UNENFORCEABLE = {
    "not": {"type": "integer", "not": {"const": 1}},
    "if": {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}},
    "uniqueItems": {"type": "array", "uniqueItems": True},
    "contains": {"type": "array", "contains": {"const": 1}},
    "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    "allOf": {"allOf": [{"type": "integer"}, {"minimum": 1}]},
    "multipleOf": {"type": "number", "multipleOf": 0.5},
    "minLength": {"type": "string", "pattern": "^a+$", "maxLength": 3},
    "lookahead": {"type": "string", "pattern": "^(?!a).*$"},
    "$ref": {"$ref": "https://example.com/schema.json"},
    "required": {"type": "object", "properties": {"a": S}, "required": ["a", "b"]},
    "additionalItems": {"type": "array", "items": [S], "additionalItems": False},
    "type": {"type": "date"},
}


@pytest.mark.parametrize("keyword", UNENFORCEABLE)
def test_schema_features_the_grammar_cannot_enforce_are_refused_by_name(keyword: str) -> None:
    nested = {"type": "object", "properties": {"x": UNENFORCEABLE[keyword]}, "required": ["x"]}
    with pytest.raises(InvalidRequestError) as info:
        check_schema(nested, "response_format.json_schema.schema")
    assert info.value.param == "response_format.json_schema.schema"
    assert keyword.split("-")[0] in info.value.message or "lookahead" in info.value.message
    assert "/properties/x" in info.value.message


def test_unenforceable_tool_parameters_are_refused() -> None:
    parameters = {"type": "object", "properties": {"x": UNENFORCEABLE["not"]}}
    message = refused("tools[0].function.parameters", tools=[tool(parameters=parameters)])
    assert "'not'" in message


def test_properties_named_like_keywords_are_not_keywords() -> None:
    names = ("not", "if", "contains", "uniqueItems", "oneOf")
    check_schema({"type": "object", "properties": {n: S for n in names}}, "schema")


def test_annotations_and_unknown_keywords_are_ignored() -> None:
    schema = {"type": "integer", "title": "t", "description": "d", "default": 1, "x-extra": True}
    check_schema(schema, "schema")


class Kind(enum.Enum):
    CAT = "cat"
    DOG = "dog"


class Owner(BaseModel):
    name: str = Field(max_length=20)
    phone: str | None = None


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    species: Kind
    age: int
    tags: list[str]
    owner: Owner
    detail: Annotated[Cat | Dog, Field(discriminator="kind")]
    nicknames: list[Owner] | None


def test_schemas_the_sdk_builds_from_pydantic_models_are_accepted() -> None:
    # what client.chat.completions.parse(response_format=Pet) sends
    check_schema(to_strict_json_schema(Pet), "schema")
    check_schema(Pet.model_json_schema(), "schema")


# --- history ---------------------------------------------------------------------------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def history(*messages: dict[str, Any]) -> list[Any]:
    return req(messages=list(messages)).messages


def test_tool_results_answer_earlier_calls() -> None:
    check_tool_history(
        history(
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "r"},
        )
    )


def test_a_tool_call_id_that_matches_no_earlier_call_is_refused() -> None:
    messages = history(
        {"role": "user", "content": "q"},
        {"role": "tool", "tool_call_id": "call_1", "content": "r"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
    )
    with pytest.raises(InvalidRequestError) as info:
        check_tool_history(messages)
    assert info.value.param == "messages[1].tool_call_id"
    assert "call_1" in info.value.message
