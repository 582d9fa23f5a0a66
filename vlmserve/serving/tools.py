"""A chat request's output constraints: ``response_format``, ``tools``, ``tool_choice``, history.

Checks what the wire models cannot (tool counts, names, built-in tool types, schema features the
grammar engine cannot enforce, ``tool_call_id`` references) and normalizes the constraints into
the OpenAI JSON that ``GenerationRequest`` carries, for every engine alike.

JSON Schema support: what the grammar enforces is accepted; a keyword it would silently ignore is
a 400 naming it, so an answer never "validates" only because part of the schema was dropped.
Annotations (``title``, ``description``, ``default``, ``examples``...) and unknown keywords are
ignored, as JSON Schema itself ignores them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vlmserve.errors import InvalidRequestError
from vlmserve.protocol.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessageIn,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolMessage,
)
from vlmserve.protocol.tokens import TokenCountRequest

MAX_TOOLS = 128
TOOL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")
BUILTIN_TOOL_TYPES = ("web_search", "retrieval")  # Step runs these itself; we do not offer them
JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})

# Assertions the grammar cannot enforce (xgrammar 0.2.x ignores them or enforces a weaker rule).
UNSUPPORTED_KEYWORDS = {
    "not": "negation",
    "if": "conditionals",
    "then": "conditionals",
    "else": "conditionals",
    "dependentRequired": "property dependencies",
    "dependentSchemas": "property dependencies",
    "dependencies": "property dependencies",
    "contains": "array containment",
    "minContains": "array containment",
    "maxContains": "array containment",
    "additionalItems": "draft-04 tuple items (use prefixItems)",
    "$dynamicRef": "dynamic references",
    "$dynamicAnchor": "dynamic references",
    "$recursiveRef": "dynamic references",
    "$recursiveAnchor": "dynamic references",
}
_SUBSCHEMA: tuple[str, ...] = ("items", "additionalProperties", "propertyNames", "not", "if")
_SUBSCHEMA += ("then", "else", "contains", "unevaluatedProperties", "unevaluatedItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


@dataclass(frozen=True, slots=True)
class OutputConstraints:
    """What ``GenerationRequest`` carries (see its field comments)."""

    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True


def output_constraints(req: ChatCompletionRequest | TokenCountRequest) -> OutputConstraints:
    """The request's constraints, validated; raises ``InvalidRequestError`` naming the field."""
    tools = _tools(req.tools or [])
    return OutputConstraints(
        response_format=_response_format(req.response_format),
        tools=tools or None,
        tool_choice=_tool_choice(req.tool_choice, tools),
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )


def check_tool_history(messages: Sequence[ChatMessageIn]) -> None:
    """Every ``role: tool`` message answers a call an earlier assistant message made."""
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        if isinstance(message, AssistantMessage):
            call_ids.update(call.id for call in message.tool_calls or ())
        elif isinstance(message, ToolMessage) and message.tool_call_id not in call_ids:
            known = ", ".join(sorted(call_ids)) or "none"
            raise InvalidRequestError(
                f"messages[{i}].tool_call_id {message.tool_call_id!r} matches no tool call of an "
                f"earlier assistant message (calls so far: {known}); send the assistant message "
                "with its tool_calls before the tool results.",
                param=f"messages[{i}].tool_call_id",
            )


# --- response_format -------------------------------------------------------------------------


def _response_format(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "json_object"}
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise InvalidRequestError(
            "response_format: type 'json_schema' needs json_schema: {'name': ..., 'schema': "
            "{...}}.",
            param="response_format.json_schema",
        )
    check_schema(spec.schema_, "response_format.json_schema.schema")
    # Every schema is enforced closed, ``strict`` sent or not (as vLLM compiles them): a client
    # that omits it (instructor's JSON_SCHEMA mode) still means the properties it declared.
    # Engines, and the replicas of a remote one, are told so.
    fields: dict[str, Any] = {"name": spec.name, "schema": spec.schema_, "strict": True}
    if spec.description:
        fields["description"] = spec.description
    return {"type": "json_schema", "json_schema": fields}


# --- tools -----------------------------------------------------------------------------------


def _tools(tools: list[Tool]) -> tuple[dict[str, Any], ...]:
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(
            f"tools: at most {MAX_TOOLS} tools are allowed, got {len(tools)}; send only the "
            "tools this turn may need.",
            param="tools",
        )
    out = tuple(_tool(i, tool) for i, tool in enumerate(tools))
    names = [t["function"]["name"] for t in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequestError(
                f"tools[{i}].function.name: {name!r} is already the name of another tool; tool "
                "names must be unique.",
                param=f"tools[{i}].function.name",
            )
    return out


def _tool(i: int, tool: Tool) -> dict[str, Any]:
    where = f"tools[{i}]"
    if tool.type in BUILTIN_TOOL_TYPES:
        raise InvalidRequestError(
            f"{where}.type: the built-in {tool.type!r} tool is not offered by this server; "
            "declare a 'function' tool and run the search or retrieval yourself.",
            param=f"{where}.type",
        )
    if tool.type != "function":
        raise InvalidRequestError(
            f"{where}.type: unknown tool type {tool.type!r}; only 'function' tools are supported.",
            param=f"{where}.type",
        )
    function = tool.function
    if function is None or not function.name:
        raise InvalidRequestError(
            f"{where}.function: a function tool needs function.name.", param=f"{where}.function"
        )
    if not TOOL_NAME.match(function.name):
        raise InvalidRequestError(
            f"{where}.function.name: {function.name!r} is not a valid tool name; use letters, "
            "digits, '_' and '-', start with a letter or '_', at most 64 characters.",
            param=f"{where}.function.name",
        )
    parameters = function.parameters
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    elif parameters.get("type") != "object":
        raise InvalidRequestError(
            f"{where}.function.parameters: the root of a tool's parameters must be "
            "{'type': 'object', ...}.",
            param=f"{where}.function.parameters",
        )
    check_schema(parameters, f"{where}.function.parameters")
    out: dict[str, Any] = {"name": function.name, "parameters": parameters}
    if function.description:
        out["description"] = function.description
    return {"type": "function", "function": out}


def _tool_choice(
    choice: str | NamedToolChoice | None, tools: tuple[dict[str, Any], ...]
) -> str | dict[str, Any] | None:
    if not tools:
        if choice not in (None, "none"):
            raise InvalidRequestError(
                "tool_choice: a tool choice other than 'none' needs tools; send tools or omit "
                "tool_choice.",
                param="tool_choice",
            )
        return None
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    names = [t["function"]["name"] for t in tools]
    if choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice.function.name: {choice.function.name!r} is not one of the tools "
            f"({', '.join(names)}).",
            param="tool_choice.function.name",
        )
    return {"type": "function", "function": {"name": choice.function.name}}


# --- JSON Schema -----------------------------------------------------------------------------


def check_schema(schema: Any, param: str) -> None:
    """Raise a 400 naming every feature of ``schema`` the grammar engine cannot enforce."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param}: a JSON Schema must be an object.", param=param)
    problems = [f"{what} at {path or '/'}" for path, what in _problems(schema, schema, "")]
    if problems:
        raise InvalidRequestError(
            f"{param}: the grammar engine cannot enforce {'; '.join(problems[:8])}. Remove these "
            "keywords or rewrite them (e.g. oneOf → anyOf, allOf → one merged schema).",
            param=param,
        )


def _problems(schema: Any, root: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        yield path, "a subschema that is not an object or a boolean"
        return
    for key in schema:
        if key in UNSUPPORTED_KEYWORDS:
            yield path, f"'{key}' ({UNSUPPORTED_KEYWORDS[key]})"
    yield from _keyword_problems(schema, root, path)
    for key, sub in _children(schema):
        yield from _problems(sub, root, f"{path}/{key}")


def _keyword_problems(
    schema: dict[str, Any], root: dict[str, Any], path: str
) -> Iterator[tuple[str, str]]:
    kinds = schema.get("type")
    kind_list = kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []
    if any(k not in JSON_TYPES for k in kind_list):
        yield path, f"'type' {kinds!r} (types are {', '.join(sorted(JSON_TYPES))})"
    if schema.get("uniqueItems") is True:
        yield path, "'uniqueItems' (unique array items)"
    if ("minLength" in schema or "maxLength" in schema) and (
        "pattern" in schema or "format" in schema
    ):
        yield path, "'minLength'/'maxLength' together with 'pattern' or 'format'"
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and ("(?=" in pattern or "(?!" in pattern):
        yield path, "a lookahead '(?=...)' / '(?!...)' in 'pattern'"
    if "multipleOf" in schema and not (kinds == "integer" and _is_int(schema["multipleOf"])):
        yield path, "'multipleOf' (only an integer multipleOf of an integer)"
    if "allOf" in schema and len(schema["allOf"]) > 1:
        yield path, "'allOf' with more than one schema"
    if "oneOf" in schema and not _is_discriminated(schema, root):
        yield path, "'oneOf' whose branches may overlap"
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
        yield path, f"'$ref' {ref!r} (only references into the schema itself, '#/...')"
    properties = schema.get("properties") or {}
    missing = [n for n in schema.get("required") or () if n not in properties]
    if missing:
        yield path, f"'required' names {missing} that 'properties' does not define"


def _children(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key in _SUBSCHEMA:
        if key in schema:
            yield key, schema[key]
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or ()):
            yield f"{key}/{i}", sub
    for key in _SUBSCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield f"{key}/{name}", sub


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_discriminated(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    """A ``oneOf`` is enforceable as ``anyOf`` when its branches cannot both match: each one
    requires the ``discriminator.propertyName`` property and pins it to its own values."""
    discriminator = schema.get("discriminator")
    name = discriminator.get("propertyName") if isinstance(discriminator, dict) else None
    if not isinstance(name, str):
        return False
    seen: set[str] = set()
    for branch in schema["oneOf"]:
        values = _pinned_values(_resolve(branch, root), name)
        if values is None or seen & values:
            return False
        seen |= values
    return True


def _pinned_values(branch: Any, name: str) -> set[str] | None:
    if not isinstance(branch, dict) or name not in (branch.get("required") or ()):
        return None
    prop = (branch.get("properties") or {}).get(name)
    if not isinstance(prop, dict):
        return None
    if "const" in prop:
        return {repr(prop["const"])}
    if isinstance(prop.get("enum"), list):
        return {repr(v) for v in prop["enum"]}
    return None


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = (
            node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        )
    return node
