"""Chunk bookkeeping without I/O: SSE framing, token counts, tool calls, early ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from vlmserve.engine.remote.stream import StreamState, parse_chunk, prompt_usage_of, sse_data
from vlmserve.engine.types import Delta, Finished, FinishReason, PromptUsage, ToolCall
from vlmserve.errors import ContextLengthError, InvalidRequestError, UpstreamError


def choice(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": reason}]}


async def lines_of(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


@pytest.mark.anyio
async def test_sse_framing_skips_comments_and_joins_multiline_data() -> None:
    lines = lines_of(": keep-alive", "", 'data: {"a":', "data: 1}", "", "data:[DONE]", "")
    assert [d async for d in sse_data(lines)] == ['{"a":\n1}', "[DONE]"]


def test_cached_tokens_read_from_details_or_top_level() -> None:
    details = {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4, "image_tokens": 3}}
    assert prompt_usage_of(details) == PromptUsage(9, image_tokens=3, cached_tokens=4)
    assert prompt_usage_of({"prompt_tokens": 9, "cached_tokens": 2}) == PromptUsage(
        9, cached_tokens=2
    )
    assert prompt_usage_of({"completion_tokens": 1}) is None


def test_tokens_follow_continuous_usage_for_one_choice() -> None:
    state = StreamState(1, "r")
    state.feed({**choice(0, {"role": "assistant", "content": ""}), "usage": usage(7, 0)})
    deltas = state.feed({**choice(0, {"content": "hello world"}), "usage": usage(7, 3)})
    assert deltas == [Delta(0, "hello world", 3)]
    assert state.feed({**choice(0, {}, "stop"), "usage": usage(7, 3)}) == []
    assert state.finish() == [Finished(0, FinishReason.STOP, usage=PromptUsage(7))]


def test_missing_tokens_are_reconciled_with_the_final_usage() -> None:
    state = StreamState(1, "r")
    state.feed(choice(0, {"content": "ab"}))  # two tokens in one chunk, counted as one
    state.feed(choice(0, {}, "length"))
    state.feed({"choices": [], "usage": usage(7, 2)})
    assert state.finish() == [
        Delta(0, "", 1),
        Finished(0, FinishReason.LENGTH, usage=PromptUsage(7)),
    ]


def test_streamed_tool_calls_arrive_whole_on_finished() -> None:
    state = StreamState(1, "r")
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get", "arguments": ""},
    }
    state.feed(choice(0, {"tool_calls": [first]}))
    state.feed(choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}))
    state.feed(
        choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "tool_calls")
    )
    (finished,) = state.finish()
    assert finished == Finished(
        0, FinishReason.TOOL_CALLS, (ToolCall("call_1", "get", '{"x": 1}'),)
    )


def test_stream_ending_before_a_choice_finished_is_an_upstream_error() -> None:
    state = StreamState(2, "r")
    state.feed(choice(0, {"content": "x"}, "stop"))
    with pytest.raises(UpstreamError, match="choice 1"):
        state.finish()


def test_unknown_choice_index_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        StreamState(1, "r").feed(choice(3, {"content": "x"}))


def test_budget_cuts_every_choice_with_length() -> None:
    state = StreamState(1, "r")
    state.budget = 2
    state.feed(choice(0, {"content": "a"}))
    assert not state.is_cut_short
    state.feed(choice(0, {"content": "b"}))
    assert state.is_cut_short
    assert state.feed(choice(0, {"content": "c"})) == []
    assert state.finish() == [Finished(0, FinishReason.LENGTH)]


def test_error_objects_inside_the_stream_raise_what_they_mean() -> None:
    with pytest.raises(ContextLengthError):
        parse_chunk('{"error": {"message": "maximum context length is 8", "code": 400}}', "r")
    with pytest.raises(InvalidRequestError):
        parse_chunk('{"object": "error", "message": "bad image", "code": 400}', "r")
    with pytest.raises(UpstreamError):
        parse_chunk('{"error": {"message": "engine dead"}}', "r")
    with pytest.raises(UpstreamError):
        parse_chunk("{not json", "r")


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}
