"""Tool calls and JSON mode on a replica, enforced by vlmserve: the call envelope.

A replica's own tool-call parsing (vLLM's ``--tool-call-parser``) is neither needed nor trusted:
parsers accept what the model wrote, schema-valid or not. Instead vlmserve asks the replica for a
structured output, a JSON document whose schema (the *envelope*) admits only what the request
allows, and reads the calls out of it itself. vLLM and SGLang enforce ``response_format``
``json_schema`` with their grammar backends (xgrammar), so every call names a declared tool and
its arguments match that tool's schema, on any replica, with no server flag.

    tool_choice named f    {"tool_calls": [{"name": "f", "arguments": {...}}]}          (one call)
    tool_choice required   {"tool_calls": [call, ...]}    (one or more; one if not parallel)
    tool_choice auto       {"content": "text"}  or  {"tool_calls": [call, ...]}
    auto + JSON mode       {"content": <the JSON answer>}  or  {"tool_calls": [...]}

where a call is ``{"name": <a declared name>, "arguments": <that tool's parameters>}``. Every
object of the envelope is closed (``additionalProperties: false``), and so are the objects of
JSON-mode schemas that do not say otherwise (``closed_schema``): what vLLM does for every schema,
made explicit for every replica. Whitespace is asked compact with vLLM's
``structured_outputs.disable_any_whitespace`` (other servers ignore the field).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from vlmserve.engine.types import GenerationRequest, ToolCall

Json = dict[str, Any]
ENVELOPE_NAME = "vlmserve_output"

_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def uses_envelope(request: GenerationRequest) -> bool:
    """Does the replica answer in the call envelope (the request may call tools)?"""
    return bool(request.tools) and request.tool_choice != "none"


def response_format_for(request: GenerationRequest) -> Json | None:
    """The ``response_format`` to send: the envelope, the request's JSON mode closed, or None."""
    if uses_envelope(request):
        return _json_schema(ENVELOPE_NAME, envelope_schema(request))
    response_format = request.response_format
    if response_format is None or response_format.get("type") != "json_schema":
        return response_format
    spec = response_format["json_schema"]
    return _json_schema(spec["name"], closed_schema(spec["schema"]))


def _json_schema(name: str, schema: Any) -> Json:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def envelope_schema(request: GenerationRequest) -> Json:
    tools = [t["function"] for t in request.tools or ()]
    choice = request.tool_choice or "auto"
    if isinstance(choice, dict):
        named = choice["function"]["name"]
        return _calls_object([_call_schema(t) for t in tools if t["name"] == named], single=True)
    calls = _calls_object([_call_schema(t) for t in tools], not request.parallel_tool_calls)
    if choice == "required":
        return calls
    content = _answer_schema(request.response_format)
    return {"anyOf": [_object({"content": content}), calls]}


def _answer_schema(response_format: Json | None) -> Any:
    if response_format is None:
        return {"type": "string"}
    if response_format["type"] == "json_object":
        return {"type": "object"}
    return closed_schema(response_format["json_schema"]["schema"])


def _call_schema(function: Json) -> Json:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return _object({"name": {"const": function["name"]}, "arguments": closed_schema(parameters)})


def _calls_object(calls: list[Json], single: bool) -> Json:
    items: Json = calls[0] if len(calls) == 1 else {"anyOf": calls}
    array: Json = {"type": "array", "items": items, "minItems": 1}
    if single:
        array["maxItems"] = 1
    return _object({"tool_calls": array})


def _object(properties: Json) -> Json:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


# One unescaped JSON string character (no control characters, quote or backslash, no
# surrogates), as the local grammar writes it (engine/local/grammar.py).
_JSON_CHAR = "[ !#-\\[\\]-\x7f\x80-\ud7ff\ue000-\U0010ffff]"


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that does not say
    otherwise (an open schema lets a grammar invent keys until ``max_tokens``), and a string's
    ``minLength``/``maxLength`` as an equivalent ``pattern``: xgrammar's own length rule lets raw
    control characters into strings, which is not JSON (vLLM uses xgrammar too)."""
    if not isinstance(schema, dict):
        return schema
    out = {key: _close_child(key, value) for key, value in schema.items()}
    if _is_string_with_length(out):
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f"^{_JSON_CHAR}{{{low},{high}}}$"
    # A bare {"type": "object"} means any object; one that lists its properties means those.
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def _is_string_with_length(schema: Json) -> bool:
    has_length = "minLength" in schema or "maxLength" in schema
    plain = "pattern" not in schema and "format" not in schema
    return has_length and plain and schema.get("type", "string") in ("string", ["string"])


def _close_child(key: str, value: Any) -> Any:
    if key in _SCHEMA_VALUES:
        return closed_schema(value)
    if key in _SCHEMA_LISTS and isinstance(value, list):
        return [closed_schema(v) for v in value]
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        return {name: closed_schema(v) for name, v in value.items()}
    return value


def read_envelope(text: str) -> tuple[str, list[ToolCall]]:
    """The content and calls in a replica's envelope. Text that is not a complete envelope (the
    answer was cut by ``max_tokens``) is returned as content, as it was generated."""
    try:
        value = json.loads(text, strict=False)  # raw control characters in strings: escaped below
    except ValueError:
        return text, []
    if not isinstance(value, dict):
        return text, []
    if "tool_calls" in value and isinstance(value["tool_calls"], list):
        calls = [_call(c) for c in value["tool_calls"] if isinstance(c, dict)]
        return "", [c for c in calls if c is not None]
    if "content" in value:
        content = value["content"]
        return content if isinstance(content, str) else _dumps(content), []
    return text, []


def _call(value: Json) -> ToolCall | None:
    name = value.get("name")
    if not isinstance(name, str):
        return None
    return ToolCall(new_call_id(), name, _dumps(value.get("arguments", {})))


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(16)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
