"""Engine events → the protocol objects clients see: one response, or a chain of chunks.

One small function per output concern (STYLE.md anti-pattern 1): usage, finish reasons, tool
calls, the collected response, the chunk stream.

Tool calls arrive as ``ToolCallDelta`` pieces (the local engine) or whole in ``Finished.tool_calls``
(remote engines); either way a response lists them in ``message.tool_calls`` (content ``""`` when
the model only called tools, as Step answers), and a stream sends each call as OpenAI deltas:
``{index, id, type, function: {name, arguments: ""}}`` first, then ``function.arguments``
fragments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from vlmserve.engine import types as engine
from vlmserve.engine.types import Delta, Finished, FinishReason, PromptUsage, ToolCallDelta
from vlmserve.protocol import stream as wire
from vlmserve.protocol.chat import ChatCompletion, ChatMessageOut, Choice, FunctionCall, ToolCall
from vlmserve.protocol.stream import ChatCompletionChunk, ChoiceDelta, ChunkChoice
from vlmserve.protocol.usage import PromptTokensDetails, Usage
from vlmserve.serving.chat import ChatRun

UsageMode = Literal["step", "openai"]


def usage_of(prompt: PromptUsage, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt.prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt.prompt_tokens + completion_tokens,
        cached_tokens=prompt.cached_tokens,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=prompt.cached_tokens,
            image_tokens=prompt.image_tokens,
            video_tokens=prompt.video_tokens,
        ),
    )


def finish_reason(reason: FinishReason) -> str:
    # An engine-side abort only reaches a client when the server shuts down mid-answer.
    return FinishReason.STOP.value if reason is FinishReason.ABORT else reason.value


def add_call_piece(calls: list[ToolCall], piece: ToolCallDelta) -> None:
    """Fold a streamed piece into the calls of its choice (a new call starts with its id)."""
    if piece.id is not None or piece.call_index >= len(calls):
        calls.append(
            ToolCall(id=piece.id or "", function=FunctionCall(name=piece.name or "", arguments=""))
        )
    calls[piece.call_index].function.arguments += piece.arguments


def whole_calls(calls: tuple[engine.ToolCall, ...]) -> list[ToolCall]:
    return [
        ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
    ]


def call_deltas(piece: ToolCallDelta) -> ChoiceDelta:
    """A streamed piece as the OpenAI delta that carries it."""
    if piece.id is not None:  # a call starts: everything but the arguments still to come
        function = wire.FunctionCallDelta(name=piece.name, arguments=piece.arguments)
        call = wire.ToolCallDelta(
            index=piece.call_index, id=piece.id, type="function", function=function
        )
    else:
        function = wire.FunctionCallDelta(arguments=piece.arguments)
        call = wire.ToolCallDelta(index=piece.call_index, function=function)
    return ChoiceDelta(tool_calls=[call])


def whole_call_pieces(index: int, calls: tuple[engine.ToolCall, ...]) -> list[ToolCallDelta]:
    """Calls an engine reported whole, as the pieces a stream sends."""
    return [
        ToolCallDelta(index, i, arguments=c.arguments, id=c.id, name=c.name)
        for i, c in enumerate(calls)
    ]


async def collect(run: ChatRun) -> ChatCompletion:
    texts = [""] * run.n
    calls: list[list[ToolCall]] = [[] for _ in range(run.n)]
    reasons: list[str | None] = [None] * run.n
    completion_tokens = 0
    try:
        async for event in run.events:
            if isinstance(event, Delta):
                texts[event.index] += event.text
                completion_tokens += event.num_tokens
            elif isinstance(event, ToolCallDelta):
                add_call_piece(calls[event.index], event)
            elif isinstance(event, Finished):
                reasons[event.index] = finish_reason(event.reason)
                calls[event.index] += whole_calls(event.tool_calls)
                run.usage = event.usage or run.usage
    finally:
        await run.aclose()
    choices = [
        Choice(
            index=i,
            message=ChatMessageOut(content=texts[i], tool_calls=calls[i] or None),
            finish_reason=reasons[i],
        )
        for i in range(run.n)
    ]
    return ChatCompletion(
        id=run.id,
        created=run.created,
        model=run.model,
        choices=choices,
        usage=usage_of(run.usage, completion_tokens),
    )


async def stream(
    run: ChatRun, mode: UsageMode = "step", include_usage: bool = False
) -> AsyncIterator[ChatCompletionChunk]:
    """Chunks in OpenAI's order: a role chunk per choice, content, a finish chunk per choice.

    ``mode="step"``: every chunk carries the running usage (the hosted platform's behaviour).
    ``mode="openai"``: no usage on chunks; one final chunk with empty choices carries it when
    ``include_usage`` is asked.
    """
    completion_tokens = 0
    running = mode == "step"

    def chunk(index: int, delta: ChoiceDelta, reason: str | None = None) -> ChatCompletionChunk:
        usage = usage_of(run.usage, completion_tokens) if running else None
        choice = ChunkChoice(index=index, delta=delta, finish_reason=reason)
        return ChatCompletionChunk(
            id=run.id, created=run.created, model=run.model, choices=[choice], usage=usage
        )

    try:
        for index in range(run.n):
            yield chunk(index, ChoiceDelta(role="assistant", content=""))
        async for event in run.events:
            if isinstance(event, Delta):
                completion_tokens += event.num_tokens
                if event.text:
                    yield chunk(event.index, ChoiceDelta(content=event.text))
            elif isinstance(event, ToolCallDelta):
                yield chunk(event.index, call_deltas(event))
            elif isinstance(event, Finished):
                run.usage = event.usage or run.usage  # final counts (e.g. a replica's cache hits)
                for piece in whole_call_pieces(event.index, event.tool_calls):
                    yield chunk(event.index, call_deltas(piece))
                yield chunk(event.index, ChoiceDelta(), finish_reason(event.reason))
    finally:
        await run.aclose()
    if mode == "openai" and include_usage:
        yield ChatCompletionChunk(
            id=run.id,
            created=run.created,
            model=run.model,
            choices=[],
            usage=usage_of(run.usage, completion_tokens),
        )
