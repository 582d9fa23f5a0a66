"""How tools look in a family's prompt and output: the tools section, calls, results, and a parser.

Both seed families use the Hermes format that Qwen2.5 ships in its chat template (Qwen's function
calling guide, "Hermes-style tool use"):

- the tool signatures go into the system message, after the system text::

      # Tools

      You may call one or more functions to assist with the user query.

      You are provided with function signatures within <tools></tools> XML tags:
      <tools>
      {"type": "function", "function": {"name": "get_weather", ...}}
      </tools>

      For each function call, return a json object with function name and arguments within
      <tool_call></tool_call> XML tags:
      <tool_call>
      {"name": <function-name>, "arguments": <args-json-object>}
      </tool_call>

- a call is ``<tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>``, calls are
  separated by ``\\n`` and follow the assistant's text (if any) after a ``\\n``;
- tool results go back as one user turn holding a ``<tool_response>\\n...\\n</tool_response>``
  block per result, in the order of the calls (the format carries no call ids).

Qwen2-VL's own chat template has no tools section (unlike Qwen2.5's), so the section is injected
as above and, since a system message then exists, the template's default system text ("You are a
helpful assistant.") is written in front of it. SmolVLM (idefics3) was not trained with tools at
all; it gets the same documented format, without a default system text. On the dummy qwen2_vl
tokenizer (as on the real one) ``<tool_call>`` and ``</tool_call>`` are single, non-special tokens.

The grammar (grammar.py) makes the model write calls exactly as ``call_begin(name)`` + arguments
JSON + ``call_end``; ``ToolCallParser`` turns the text into content and ``ToolCallDelta`` events
as it streams, and also reads looser recorded outputs (other whitespace, keys in another order).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlmserve.engine.local.families import Family
from vlmserve.engine.types import ToolCall, ToolCallDelta

_TOOLS_SECTION = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{signatures}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True, slots=True)
class ToolFormat:
    name: str
    default_system: str  # the template's own default system text, kept when tools add a system turn
    trigger: str = "<tool_call>"
    end: str = "</tool_call>"
    separator: str = "\n"  # between parallel calls

    def call_begin(self, name: str) -> str:
        """What the model writes before a call's arguments (the grammar's tag begin)."""
        return f'{self.trigger}\n{{"name": {_dumps(name)}, "arguments": '

    @property
    def call_end(self) -> str:
        return "}\n" + self.end

    def render_call(self, call: ToolCall) -> str:
        try:
            arguments = _dumps(json.loads(call.arguments))
        except (ValueError, RecursionError):  # the client's history is replayed as sent
            arguments = call.arguments or "{}"
        return self.call_begin(call.name) + arguments + self.call_end

    def tools_section(self, tools: Sequence[dict[str, Any]]) -> str:
        return _TOOLS_SECTION.format(signatures="\n".join(_dumps(t) for t in tools))

    def call_texts(self, calls: Sequence[ToolCall], has_text: bool) -> list[str]:
        """An assistant turn's calls as text parts, to follow its text (if any)."""
        texts = [self.separator + self.render_call(c) for c in calls]
        if texts and not has_text:
            texts[0] = texts[0][len(self.separator) :]
        return texts

    def rewrite(
        self, conversation: list[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Template messages (``{"role", "content": [parts]}``, calls already in the assistant
        turns' text) → what the template should see: consecutive tool results merged into one
        user turn of ``<tool_response>`` blocks, and the tools section in the system turn."""
        out: list[dict[str, Any]] = []
        in_results = False  # the last turn of ``out`` holds tool results
        for message in conversation:
            if message["role"] != "tool":
                out.append(message)
                in_results = False
                continue
            block = [_text("<tool_response>\n"), *message["content"], _text("\n</tool_response>")]
            if in_results:
                out[-1] = {**out[-1], "content": [*out[-1]["content"], _text("\n"), *block]}
            else:
                out.append({"role": "user", "content": block})
            in_results = True
        return self._with_tools(out, tools) if tools else out

    def _with_tools(
        self, out: list[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        section = self.tools_section(tools)
        if out and out[0]["role"] == "system":
            parts = out[0]["content"]
            if all(p.get("type") == "text" for p in parts):
                # one text part: some templates (Gemma 3) read only a system turn's first part
                text = "".join(p["text"] for p in parts) + "\n\n" + section
                return [{**out[0], "content": [_text(text)]}, *out[1:]]
            first = {**out[0], "content": [*parts, _text("\n\n" + section)]}
            return [first, *out[1:]]
        text = f"{self.default_system}\n\n{section}" if self.default_system else section
        return [{"role": "system", "content": [_text(text)]}, *out]


QWEN2_VL_TOOLS = ToolFormat("qwen2_vl-hermes", default_system="You are a helpful assistant.")
HERMES_TOOLS = ToolFormat("hermes", default_system="")


def tool_format_for(family: Family) -> ToolFormat:
    """Hermes for every family; a template's own default system text stays in front of the
    tools section (Qwen2-VL and Qwen2.5-VL have one, Qwen3-VL's template does not)."""
    system = family.default_system_prompt
    if system == QWEN2_VL_TOOLS.default_system:
        return QWEN2_VL_TOOLS
    return HERMES_TOOLS if not system else ToolFormat("hermes", default_system=system)


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(16)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


# --- parsing ---------------------------------------------------------------------------------

_HEAD_RE = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_TAIL_RE = re.compile(r"\s*\}\s*")  # what closes a call object after its arguments
_TEXT, _HEAD, _ARGS, _TAIL, _LOOSE = "text", "head", "args", "tail", "loose"

Piece = str | ToolCallDelta  # content text, or a piece of a call


class ToolCallParser:
    """Splits one choice's streamed text into content and tool calls.

    ``feed`` returns what can be released now, in order; ``finish`` releases the rest at the end
    of the choice. Text that may start the trigger is held back, and whitespace next to a call is
    dropped (a reply of calls only has empty content). A call whose head is ``{"name": "...",
    "arguments": {`` (what the grammar makes the model write) streams its arguments as they come:
    a small JSON scanner finds where the arguments object ends, so ``</tool_call>`` inside a string
    does not end the call. Any other block is parsed whole at its end tag (keys in another order,
    arguments as a JSON string); one that is not a call is released as the text it is. A call cut
    off before its arguments began is dropped; one cut off inside them keeps what it has (the
    choice then finishes with ``length``).
    """

    def __init__(self, fmt: ToolFormat, index: int, make_id: Callable[[], str] = new_call_id):
        self.fmt = fmt
        self.index = index
        self.make_id = make_id
        self.num_calls = 0  # calls started (their id and name were released)
        self._state = _TEXT
        self._buf = ""  # text of the current state not released yet
        self._held_ws = ""  # trailing whitespace of the content, dropped if a call follows
        self._after_call = False  # just after a call: leading whitespace is not content
        self._has_content = False
        self._scanner = _JsonScanner()

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        out = self.feed("")
        if self._state == _TEXT:
            self._emit_text(out, self._buf, final=True)
        elif self._state in (_HEAD, _LOOSE):
            self._parse_block(out, self._buf, complete=False)
        self._buf = ""
        return out

    def _step(self, out: list[Piece]) -> bool:
        """Advance once; False when more text is needed."""
        if self._state == _TEXT:
            return self._step_text(out)
        if self._state == _HEAD:
            return self._step_head(out)
        if self._state == _ARGS:
            return self._step_args(out)
        if self._state == _TAIL:
            return self._step_tail()
        at = self._buf.find(self.fmt.end)  # _LOOSE: the block is read whole at its end tag
        if at < 0:
            return False
        is_call = self._parse_block(out, self._buf[:at], complete=True)
        self._end_block(at, is_call)
        return True

    def _end_block(self, at: int, is_call: bool) -> None:
        self._buf = self._buf[at + len(self.fmt.end) :]
        self._state, self._after_call = _TEXT, is_call

    def _step_text(self, out: list[Piece]) -> bool:
        at = self._buf.find(self.fmt.trigger)
        if at < 0:
            cut = len(self._buf) - _partial_suffix(self._buf, self.fmt.trigger)
            self._emit_text(out, self._buf[:cut])
            self._buf = self._buf[cut:]
            return False
        self._emit_text(out, self._buf[:at])
        self._buf = self._buf[at + len(self.fmt.trigger) :]
        self._state = _HEAD
        return True

    def _step_head(self, out: list[Piece]) -> bool:
        match = _HEAD_RE.match(self._buf)
        if match and self._buf[match.end() : match.end() + 1] == "{":
            self._start_call(out, json.loads(f'"{match.group(1)}"'))
            self._buf = self._buf[match.end() :]
            self._scanner = _JsonScanner()
            self._state = _ARGS
            return True
        if self.fmt.end in self._buf:
            self._state = _LOOSE
            return True
        return False

    def _step_args(self, out: list[Piece]) -> bool:
        used = self._scanner.feed(self._buf)
        if used:
            out.append(ToolCallDelta(self.index, self.num_calls - 1, arguments=self._buf[:used]))
            self._buf = self._buf[used:]
        if not self._scanner.is_done:
            return False
        self._state = _TAIL
        return True

    def _step_tail(self) -> bool:
        """After a call's arguments: the call object's ``}``, then the end tag, or another call
        in the same block (models sometimes write several objects in one block)."""
        match = _TAIL_RE.match(self._buf)
        if match and self._buf.startswith("{", match.end()):
            self._buf, self._state = self._buf[match.end() :], _HEAD
            return True
        at = self._buf.find(self.fmt.end)  # anything else up to the end tag is skipped
        if at < 0:
            return False
        self._end_block(at, True)
        return True

    def _parse_block(self, out: list[Piece], body: str, complete: bool) -> bool:
        """Release a block read whole; True if it held calls."""
        calls = _loose_calls(body)
        if calls:
            for name, arguments in calls:
                self._start_call(out, name)
                out.append(ToolCallDelta(self.index, self.num_calls - 1, arguments=arguments))
            return True
        if complete or not body.lstrip().startswith("{"):  # not a call: the model's text
            end = self.fmt.end if complete else ""
            self._emit_text(out, self.fmt.trigger + body + end, final=not complete)
        # else: a call cut off before its arguments began carries nothing usable
        return False

    def _start_call(self, out: list[Piece], name: str) -> None:
        self._held_ws = ""  # whitespace before a call is not content
        out.append(ToolCallDelta(self.index, self.num_calls, id=self.make_id(), name=name))
        self.num_calls += 1

    def _emit_text(self, out: list[Piece], text: str, *, final: bool = False) -> None:
        text, self._held_ws = self._held_ws + text, ""
        if self._after_call:  # calls first: content starts at the next non-space
            text = text if self._has_content else text.lstrip()
            self._after_call = not text
        if final and not self.num_calls:
            body = text  # no calls: the text exactly as generated
        else:
            body = text.rstrip()
            if not final:
                self._held_ws = text[len(body) :]
        if body:
            out.append(body)
            self._has_content = True


class _JsonScanner:
    """Finds the end of one JSON value, fed in pieces (strings and nesting are tracked)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.is_done = False

    def feed(self, text: str) -> int:
        """How many characters of ``text`` belong to the value (all of it unless it ended)."""
        for i, char in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.is_done = True
                    return i + 1
        return len(text)


def _partial_suffix(text: str, token: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``token``."""
    for size in range(min(len(token) - 1, len(text)), 0, -1):
        if text.endswith(token[:size]):
            return size
    return 0


def _loose_calls(body: str) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each call object in a block body, or None if one is not a call."""
    calls, at = [], 0
    decoder = json.JSONDecoder()
    while body[at:].strip():
        at += len(body[at:]) - len(body[at:].lstrip())
        try:
            value, at = decoder.raw_decode(body, at)
        except ValueError:
            return None
        call = _loose_call(value)
        if call is None:
            return None
        calls.append(call)
    return calls


def _loose_call(value: Any) -> tuple[str, str] | None:
    """(name, arguments JSON) of a call such as ``{"arguments": {...}, "name": "f"}``."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], _dumps(arguments)
