"""Engine events → the protocol objects clients see: one response, or a chain of chunks.

One small function per output concern (STYLE.md anti-pattern 1): usage, finish reasons, the
collected response, the chunk stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from vlmserve.engine.types import Delta, Finished, FinishReason, PromptUsage
from vlmserve.protocol.chat import ChatCompletion, ChatMessageOut, Choice
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


async def collect(run: ChatRun) -> ChatCompletion:
    texts = [""] * run.n
    reasons: list[str | None] = [None] * run.n
    completion_tokens = 0
    try:
        async for event in run.events:
            if isinstance(event, Delta):
                texts[event.index] += event.text
                completion_tokens += event.num_tokens
            elif isinstance(event, Finished):
                reasons[event.index] = finish_reason(event.reason)
                run.usage = event.usage or run.usage
    finally:
        await run.aclose()
    choices = [
        Choice(index=i, message=ChatMessageOut(content=texts[i]), finish_reason=reasons[i])
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
            elif isinstance(event, Finished):
                run.usage = event.usage or run.usage  # final counts (e.g. a replica's cache hits)
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
