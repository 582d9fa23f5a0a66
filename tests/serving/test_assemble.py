"""``assemble``: OpenAI's finish reasons and where a stream's usage goes, from engine events.

Engines say it their own way (the local engine reports ``tool_calls`` for a named tool choice, a
replica may say ``stop`` after calls); clients see what OpenAI sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from vlmserve.engine.types import (
    Delta,
    Event,
    Finished,
    FinishReason,
    PromptUsage,
    ToolCall,
    ToolCallDelta,
)
from vlmserve.protocol.chat import StreamOptions
from vlmserve.serving import assemble
from vlmserve.serving.assemble import StreamUsage
from vlmserve.serving.chat import ChatRun

PROMPT = PromptUsage(prompt_tokens=40, image_tokens=30, video_tokens=0, cached_tokens=0)
FINAL = PromptUsage(prompt_tokens=40, image_tokens=30, video_tokens=0, cached_tokens=256 // 8)
CALL = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')


def run_of(events: Sequence[Event], n: int = 1, named_tool: bool = False) -> ChatRun:
    async def gen() -> AsyncIterator[Event]:
        for event in events:
            yield event

    return ChatRun("chatcmpl-1", 0, "m", n, PROMPT, gen(), named_tool)


NO_USAGE = StreamUsage()


def streamed(run: ChatRun, usage: StreamUsage = NO_USAGE) -> list[dict[str, Any]]:
    async def chunks() -> list[dict[str, Any]]:
        return [c.model_dump() async for c in assemble.stream(run, usage)]

    return asyncio.run(chunks())


def collected(run: ChatRun) -> Any:
    return asyncio.run(assemble.collect(run))


def answer(reason: FinishReason, *, calls: str = "none") -> list[Event]:
    """Two tokens of text, or of a call (streamed as pieces, or reported whole at the end)."""
    if calls == "pieces":
        pieces = [
            ToolCallDelta(0, 0, id=CALL.id, name=CALL.name),
            ToolCallDelta(0, 0, CALL.arguments),
        ]
        return [pieces[0], Delta(0, "", 1), pieces[1], Delta(0, "", 1), Finished(0, reason)]
    whole = (CALL,) if calls == "whole" else ()
    return [Delta(0, "a", 1), Delta(0, "b", 1), Finished(0, reason, whole, FINAL)]


# --- finish_reason ---------------------------------------------------------------------------

CASES = [
    # (engine's reason, how calls came, tool_choice named?, what OpenAI says)
    (FinishReason.STOP, "none", False, "stop"),
    (FinishReason.TOOL_CALLS, "pieces", False, "tool_calls"),
    (FinishReason.STOP, "whole", False, "tool_calls"),  # a replica that says stop after calls
    (FinishReason.TOOL_CALLS, "pieces", True, "stop"),  # named tool_choice
    (FinishReason.TOOL_CALLS, "whole", True, "stop"),
    (FinishReason.LENGTH, "pieces", False, "length"),  # cut inside a call's arguments
    (FinishReason.LENGTH, "pieces", True, "length"),
    (FinishReason.LENGTH, "none", False, "length"),
    (FinishReason.TOOL_CALLS, "none", False, "stop"),  # said calls, made none
    (FinishReason.ABORT, "none", False, "stop"),  # server shutting down mid-answer
]


@pytest.mark.parametrize(("reason", "calls", "named", "expected"), CASES)
def test_finish_reason_is_openais_in_responses_and_streams(
    reason: FinishReason, calls: str, named: bool, expected: str
) -> None:
    events = answer(reason, calls=calls)
    assert collected(run_of(events, named_tool=named)).choices[0].finish_reason == expected
    chunks = streamed(run_of(events, named_tool=named))
    assert chunks[-1]["choices"][0]["finish_reason"] == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)


# --- stream usage ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "options", "expected"),
    [
        ("openai", None, StreamUsage()),
        ("openai", StreamOptions(), StreamUsage()),
        ("openai", StreamOptions(include_usage=True), StreamUsage(final=True)),
        ("openai", StreamOptions(continuous_usage_stats=True), StreamUsage(running=True)),
        (
            "openai",
            StreamOptions(include_usage=True, continuous_usage_stats=True),
            StreamUsage(running=True, final=True),
        ),
        ("openai", StreamOptions(include_usage=None), StreamUsage()),
        ("step", None, StreamUsage(running=True)),
        ("step", StreamOptions(include_usage=True), StreamUsage(running=True)),
    ],
)
def test_stream_usage_follows_the_setting_and_the_client(
    mode: assemble.UsageMode, options: StreamOptions | None, expected: StreamUsage
) -> None:
    assert StreamUsage.of(mode, options) == expected


def test_by_default_no_chunk_carries_usage() -> None:
    chunks = streamed(run_of(answer(FinishReason.STOP)))
    assert all(c["usage"] is None for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_include_usage_sends_the_totals_once_in_a_last_chunk_without_choices() -> None:
    chunks = streamed(run_of(answer(FinishReason.STOP)), StreamUsage(final=True))
    *content, last = chunks
    assert all(c["usage"] is None for c in content)
    assert last["choices"] == [] and last["id"] == content[0]["id"]
    assert last["usage"] == {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "total_tokens": 42,
        "cached_tokens": FINAL.cached_tokens,  # the engine's final count supersedes the first
        "prompt_tokens_details": {
            "cached_tokens": FINAL.cached_tokens,
            "image_tokens": 30,
            "video_tokens": 0,
        },
    }


def test_running_usage_grows_on_every_chunk_and_sums_to_the_totals_once() -> None:
    run = run_of([*answer(FinishReason.STOP)[:-1], Finished(0, FinishReason.STOP)])
    chunks = streamed(run, StreamUsage(running=True))
    completion = [c["usage"]["completion_tokens"] for c in chunks]
    assert completion == [0, 1, 2, 2]
    assert {c["usage"]["prompt_tokens"] for c in chunks} == {40}


def test_n_choices_share_one_final_usage_chunk() -> None:
    events: list[Event] = [
        Delta(0, "a", 1),
        Delta(1, "b", 1),
        Delta(1, "c", 1),
        Finished(0, FinishReason.STOP),
        Finished(1, FinishReason.LENGTH),
    ]
    chunks = streamed(run_of(events, n=2), StreamUsage(final=True))
    assert [c["choices"] == [] for c in chunks].count(True) == 1
    assert chunks[-1]["usage"]["completion_tokens"] == 3
