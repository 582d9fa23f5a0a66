"""Bounds every request body meets before any field is read: nesting depth, valid Unicode, and
the size of JSON schemas.

Python's JSON parser turns ``"\\ud800"`` into a lone UTF-16 surrogate, which no tokenizer, UTF-8
encoder or database takes; nesting thousands of levels deep overflows any recursive walk
(schema preparation, logging, copying). Both are refused here, once, with a 400 naming the
field (``messages[0].content[1].text``) and the limit, so nothing below ``protocol`` needs to
guard against them. The walk is iterative and touches each value once: a few microseconds for
an ordinary request, and ``str.isascii`` (constant time in CPython) skips the character scan of
ASCII text however long.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic_core import PydanticCustomError

MAX_JSON_DEPTH = 64  # nesting of objects and arrays anywhere in a request body
# A JSON schema (``response_format.json_schema.schema``, a tool's ``parameters``): OpenAI allows
# 10 levels of object nesting in strict mode (about 21 JSON levels); 32 leaves room for
# ``anyOf``/``items`` wrappers. The node count bounds grammar compilation time and memory.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_NODES = 10_000

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_body(data: Any) -> Any:
    """A pydantic ``mode="before"`` check of a whole request body; returns ``data`` unchanged."""
    _walk(data, max_depth=MAX_JSON_DEPTH, max_nodes=None, what="the request body")
    return data


def check_schema(schema: Any) -> Any:
    """A pydantic ``mode="after"`` check of one JSON schema value; returns it unchanged."""
    _walk(schema, max_depth=MAX_SCHEMA_DEPTH, max_nodes=MAX_SCHEMA_NODES, what="a JSON schema")
    return schema


def check_json_text(text: str, param: str) -> None:
    """A string that holds JSON (a tool call's ``arguments``, at ``param``): once parsed, the same
    bounds as a body. Text that is not JSON passes (it is replayed as sent)."""
    try:
        value = json.loads(text)
    except RecursionError:
        detail = f"this JSON text nests deeper than {MAX_JSON_DEPTH} levels; flatten it"
        raise PydanticCustomError(
            "json_too_deep", "{detail}", {"detail": detail, "param": param}
        ) from None
    except ValueError:
        return
    try:
        _walk(value, max_depth=MAX_JSON_DEPTH, max_nodes=None, what="this JSON text")
    except PydanticCustomError as exc:
        inner = str((exc.context or {}).get("param", ""))
        inner = inner if not inner or inner.startswith("[") else "." + inner
        raise PydanticCustomError(
            exc.type, "{detail}", {"detail": exc.message(), "param": param + inner}
        ) from None


def _walk(root: Any, *, max_depth: int, max_nodes: int | None, what: str) -> None:
    # Each container entry: (value, depth, parent entry, key); paths are only built for an
    # error. Leaves are checked in place (no entry): most values of a body are leaves.
    if not isinstance(root, dict | list):
        if isinstance(root, str):
            _check_text(root, (root, 0, None, None))
        return
    stack: list[tuple[Any, int, Any, str | int | None]] = [(root, 0, None, None)]
    limit = max_nodes if max_nodes is not None else -1
    num_nodes = 1
    while stack:
        entry = stack.pop()
        value, depth = entry[0], entry[1]
        if depth >= max_depth:
            raise _error(
                "json_too_deep",
                f"{what} may nest objects and arrays at most {max_depth} levels deep; flatten it",
                entry,
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            num_nodes += 1
            if num_nodes > limit >= 0:
                raise _error(
                    "json_too_large",
                    f"{what} may have at most {max_nodes} values (objects, arrays, strings, "
                    "numbers); simplify it",
                    (child, depth + 1, entry, key),
                )
            if type(key) is str and not key.isascii():
                _check_text(key, (key, depth + 1, entry, key))
            if type(child) is str:
                if not child.isascii():
                    _check_text(child, (child, depth + 1, entry, key))
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1, entry, key))


def _check_text(text: str, entry: tuple[Any, int, Any, str | int | None]) -> None:
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found is None:
        return
    where = found.start()
    raise _error(
        "invalid_unicode",
        f"contains a lone UTF-16 surrogate (U+{ord(found.group()):04X}) at character {where}, "
        "which is not valid Unicode; send valid UTF-8 text (escape a non-BMP character as a "
        "surrogate pair, e.g. \\ud83d\\ude00)",
        entry,
    )


def _error(kind: str, message: str, entry: tuple[Any, ...]) -> PydanticCustomError:
    """``ctx.param`` carries the field's path; ``api/errors.py`` reports it as ``param``."""
    path = _path(entry)
    return PydanticCustomError(kind, "{detail}", {"detail": message, "param": path})


def _path(entry: tuple[Any, ...] | None, max_keys: int = 12) -> str:
    """``messages[0].content[1].text``; a deeper path keeps its first ``max_keys`` keys."""
    keys: list[str | int] = []
    while entry is not None and entry[2] is not None:
        keys.append(entry[3])
        entry = entry[2]
    keys.reverse()
    out = ""
    for key in keys[:max_keys]:
        if isinstance(key, int):
            out += f"[{key}]"
            continue
        shown = key.encode("utf-8", "backslashreplace").decode()  # a key may be the bad text
        out += f".{shown}" if out else shown
    return out + ("..." if len(keys) > max_keys else "")
