"""Tool formats: the prompt's tools section and history, and the streaming call parser.

Parser cases are shaped like what real families write (Qwen2/2.5(-VL) and Hermes-2-Pro
``<tool_call>`` blocks), including the outputs that break other servers' parsers: several objects
in one block ("Extra data", vLLM #11786 / #16797), arguments before the name, arguments as a JSON
string, a missing end tag at the end of the answer, and ``</tool_call>`` inside an argument.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.engine.local.helpers import image, media
from vlmserve.engine.local.families import family_for
from vlmserve.engine.local.prompt import PromptPreparer
from vlmserve.engine.local.tool_format import (
    HERMES_TOOLS,
    QWEN2_VL_TOOLS,
    ToolCallParser,
    ToolFormat,
)
from vlmserve.engine.types import MediaPart, Message, Prompt, TextPart, ToolCall, ToolCallDelta

Calls = list[tuple[str, dict[str, Any]]]


def parse(text: str, cuts: list[int] | None = None) -> tuple[str, Calls, list[ToolCallDelta]]:
    """Feed ``text`` in pieces cut at ``cuts``; (content, [(name, arguments)], call pieces)."""
    ids = (f"call_{i}" for i in itertools.count())
    parser = ToolCallParser(HERMES_TOOLS, 0, lambda: next(ids))
    bounds = [0, *sorted(set(cuts or [])), len(text)]
    out = []
    for start, end in itertools.pairwise(bounds):
        out += parser.feed(text[start:end])
    out += parser.finish()
    pieces = [p for p in out if isinstance(p, ToolCallDelta)]
    calls: list[list[Any]] = []
    for piece in pieces:
        if piece.id is not None:
            calls.append([piece.name, ""])
        calls[piece.call_index][1] += piece.arguments
    content = "".join(p for p in out if isinstance(p, str))
    return content, [(name, json.loads(args)) for name, args in calls], pieces


WEATHER = {"location": "San Francisco, CA", "unit": "fahrenheit"}
RECORDED: dict[str, tuple[str, str, Calls]] = {
    "qwen single": (
        '<tool_call>\n{"name": "get_current_weather", "arguments": '
        '{"location": "San Francisco, CA", "unit": "fahrenheit"}}\n</tool_call>',
        "",
        [("get_current_weather", WEATHER)],
    ),
    "qwen parallel": (
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "Paris"}}\n'
        "</tool_call>\n"
        '<tool_call>\n{"name": "get_temperature_date", "arguments": {"location": "Paris", '
        '"date": "2024-10-01"}}\n</tool_call>',
        "",
        [
            ("get_current_temperature", {"location": "Paris"}),
            ("get_temperature_date", {"location": "Paris", "date": "2024-10-01"}),
        ],
    ),
    "text first": (
        "I'll look that up for you.\n\n"
        '<tool_call>\n{"name": "search", "arguments": {"query": "Eiffel tower height"}}\n'
        "</tool_call>",
        "I'll look that up for you.",
        [("search", {"query": "Eiffel tower height"})],
    ),
    "two objects in one block": (
        '<tool_call>\n{"name": "asset_search", "arguments": {"query": "oil", "type": "ETF"}}\n'
        '{"name": "asset_search", "arguments": {"query": "oil", "type": "Commodity"}}\n'
        "</tool_call>",
        "",
        [
            ("asset_search", {"query": "oil", "type": "ETF"}),
            ("asset_search", {"query": "oil", "type": "Commodity"}),
        ],
    ),
    "hermes-2-pro arguments first": (
        '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n'
        "</tool_call>",
        "",
        [("get_stock_fundamentals", {"symbol": "TSLA"})],
    ),
    "arguments as a string": (
        '<tool_call>\n{"name": "calc", "arguments": "{\\"expr\\": \\"2+2\\"}"}\n</tool_call>',
        "",
        [("calc", {"expr": "2+2"})],
    ),
    "no end tag at the end": (
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}',
        "",
        [("get_time", {"tz": "UTC"})],
    ),
    "end tag inside an argument": (
        '<tool_call>\n{"name": "echo", "arguments": {"text": "a </tool_call> b}"}}\n</tool_call>',
        "",
        [("echo", {"text": "a </tool_call> b}"})],
    ),
    "compact json, text after": (
        '<tool_call>{"name":"f","arguments":{"a":[1,{"b":null}]}}</tool_call>\n\nDone.',
        "Done.",
        [("f", {"a": [1, {"b": None}]})],
    ),
    "no calls": ("The answer is 42.\n", "The answer is 42.\n", []),
    "not a call": (
        "Use the <tool_call> tag like <tool_call>this</tool_call>.",
        "Use the <tool_call> tag like <tool_call>this</tool_call>.",
        [],
    ),
}


@pytest.mark.parametrize("case", RECORDED)
def test_recorded_outputs_parse_into_content_and_calls(case: str) -> None:
    text, content, calls = RECORDED[case]
    for size in (1, 2, 5, len(text)):  # token-sized pieces to the whole answer
        got_content, got_calls, _ = parse(text, list(range(size, len(text), size)))
        assert (got_content, got_calls) == (content, calls)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(RECORDED)), st.lists(st.integers(0, 200), max_size=12))
def test_any_split_of_the_stream_gives_the_same_result(case: str, cuts: list[int]) -> None:
    text, content, calls = RECORDED[case]
    got_content, got_calls, _ = parse(text, [c for c in cuts if c < len(text)])
    assert (got_content, got_calls) == (content, calls)


def test_call_pieces_stream_in_openai_order() -> None:
    text = RECORDED["qwen parallel"][0]
    _, _, pieces = parse(text, list(range(3, len(text), 3)))
    starts = [p for p in pieces if p.id is not None]
    assert [(p.call_index, p.id, p.name, p.arguments) for p in starts] == [
        (0, "call_0", "get_current_temperature", ""),
        (1, "call_1", "get_temperature_date", ""),
    ]
    fragments = [p for p in pieces if p.id is None]
    assert len(fragments) > 2 and all(p.name is None for p in fragments)  # arguments stream


def test_a_call_cut_before_its_arguments_is_dropped() -> None:
    assert parse('Sure.<tool_call>\n{"name": "sea')[:2] == ("Sure.", [])


@pytest.mark.parametrize("fmt", [QWEN2_VL_TOOLS, HERMES_TOOLS])
def test_a_rendered_history_call_parses_back_to_itself(fmt: ToolFormat) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo", "days": [1, 2]}')
    parser = ToolCallParser(fmt, 0)
    pieces = parser.feed(fmt.render_call(call)) + parser.finish()
    assert [p.name for p in pieces if isinstance(p, ToolCallDelta) and p.id] == ["get_weather"]
    arguments = "".join(p.arguments for p in pieces if isinstance(p, ToolCallDelta))
    assert json.loads(arguments) == json.loads(call.arguments)


# --- prompts ---------------------------------------------------------------------------------

TOOLS = ({"type": "function", "function": {"name": "get_weather", "parameters": {}}},)


def preparer(model_dir: Path) -> PromptPreparer:
    processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return PromptPreparer(processor, family_for(model, processor))


def tool_history(system: bool) -> Prompt:
    calls = (
        ToolCall("call_a", "get_weather", '{"city": "Oslo"}'),
        ToolCall("call_b", "get_weather", '{"city": "Rome"}'),
    )
    messages = (
        *((Message("system", (TextPart("Be brief."),)),) if system else ()),
        Message("user", (MediaPart(0), TextPart("Weather here and in Rome?"))),
        Message("assistant", (TextPart(""),), tool_calls=calls),
        Message("tool", (TextPart("snow"),), tool_call_id="call_a"),
        Message("tool", (TextPart("sun"),), tool_call_id="call_b"),
    )
    return Prompt(messages, media(image()))


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
@pytest.mark.parametrize("system", [False, True])
def test_tools_calls_and_results_render_through_the_chat_template(
    tiny_models: dict[str, Path], family: str, system: bool
) -> None:
    prep = preparer(tiny_models[family])
    text = prep.render(tool_history(system), TOOLS)
    section = text.index("# Tools")
    assert text.index(json.dumps(TOOLS[0])) > section
    assert ("Be brief.\n\n# Tools" in text) == system
    if family == "qwen2_vl" and not system:  # the template's default text stays first
        assert "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools" in text
    calls = '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>'
    assert calls in text
    results = "<tool_response>\nsnow\n</tool_response>\n<tool_response>\nsun\n</tool_response>"
    assert results in text and text.count("<tool_response>") == 2  # one user turn, in order
    assert prep.prepare(tool_history(system), TOOLS).usage.image_tokens > 0


def test_no_tools_no_section(tiny_models: dict[str, Path]) -> None:
    prep = preparer(tiny_models["qwen2_vl"])
    assert "# Tools" not in prep.render(tool_history(False))
