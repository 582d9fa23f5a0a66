"""Engine events → the protocol objects clients see: one response, or a chain of chunks.

One small function per output concern (STYLE.md anti-pattern 1): usage, finish reasons, tool
calls, the collected response, the chunk stream.

Wire details are OpenAI's, whatever the engine (local, or a replica that says it differently):
``finish_reason`` is ``length`` whenever the token limit cut a choice, ``tool_calls`` when it made
calls under ``tool_choice`` auto or required, ``stop`` otherwise (a named ``tool_choice`` included);
a stream's usage goes where ``StreamUsage`` says (null on chunks, a final chunk on request).

Tool calls arrive as ``ToolCallDelta`` pieces (the local engine) or whole in ``Finished.tool_calls``
(remote engines); either way a response lists them in ``message.tool_calls`` (content ``""`` when
the model only called tools, as Step answers), and a stream sends each call as OpenAI deltas:
``{index, id, type, function: {name, arguments: ""}}`` first, then ``function.arguments``
fragments.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from vlmserve.engine import types as engine
from vlmserve.engine.types import Delta, Finished, FinishReason, PromptUsage, ToolCallDelta
from vlmserve.protocol import stream as wire
from vlmserve.protocol.chat import (
    ChatCompletion,
    ChatMessageOut,
    Choice,
    FunctionCall,
    StreamOptions,
    ToolCall,
)
from vlmserve.protocol.stream import ChatCompletionChunk, ChoiceDelta, ChunkChoice
from vlmserve.protocol.usage import PromptTokensDetails, Usage
from vlmserve.serving.chat import ChatRun

UsageMode = Literal["openai", "step"]


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """Where a stream reports usage (DESIGN.md, "stream chunks")."""

    running: bool = False  # the running totals on every chunk (else ``usage: null`` there)
    final: bool = False  # one last chunk, ``choices: []``, with the totals, before ``[DONE]``

    @classmethod
    def of(cls, mode: UsageMode, options: StreamOptions | None) -> StreamUsage:
        """``mode="step"``: running totals for everyone (the hosted platform's shape); else what
        the client asks: ``include_usage`` (OpenAI) and ``continuous_usage_stats`` (vLLM)."""
        if mode == "step":
            return cls(running=True)
        if options is None:
            return cls()
        return cls(bool(options.continuous_usage_stats), bool(options.include_usage))


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


def finish_reason(reason: FinishReason, has_calls: bool, named_tool: bool) -> str:
    """OpenAI's finish_reason for a choice that ended with ``reason`` (see the module doc).

    An engine-side abort only reaches a client when the server shuts down mid-answer: ``stop``.
    """
    if reason is FinishReason.LENGTH:
        return FinishReason.LENGTH.value
    if has_calls and not named_tool:
        return FinishReason.TOOL_CALLS.value
    return FinishReason.STOP.value


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
                calls[event.index] += whole_calls(event.tool_calls)
                has_calls = bool(calls[event.index])
                reasons[event.index] = finish_reason(event.reason, has_calls, run.named_tool)
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
    run: ChatRun, usage: StreamUsage = StreamUsage()
) -> AsyncIterator[ChatCompletionChunk]:
    """Chunks in OpenAI's order: a role chunk per choice, content, a finish chunk per choice,
    then the usage chunk when ``usage.final`` asks for it."""
    completion_tokens = 0
    has_calls = [False] * run.n

    def chunk(index: int, delta: ChoiceDelta, reason: str | None = None) -> ChatCompletionChunk:
        running = usage_of(run.usage, completion_tokens) if usage.running else None
        choice = ChunkChoice(index=index, delta=delta, finish_reason=reason)
        return ChatCompletionChunk(
            id=run.id, created=run.created, model=run.model, choices=[choice], usage=running
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
                has_calls[event.index] = True
                yield chunk(event.index, call_deltas(event))
            elif isinstance(event, Finished):
                run.usage = event.usage or run.usage  # final counts (e.g. a replica's cache hits)
                for piece in whole_call_pieces(event.index, event.tool_calls):
                    has_calls[event.index] = True
                    yield chunk(event.index, call_deltas(piece))
                reason = finish_reason(event.reason, has_calls[event.index], run.named_tool)
                yield chunk(event.index, ChoiceDelta(), reason)
    finally:
        await run.aclose()
    if usage.final:
        yield ChatCompletionChunk(
            id=run.id,
            created=run.created,
            model=run.model,
            choices=[],
            usage=usage_of(run.usage, completion_tokens),
        )
