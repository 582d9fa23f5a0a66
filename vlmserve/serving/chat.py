"""``ChatService``: a chat request → a running generation, validated before any byte is sent."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from vlmserve.engine.types import (
    Event,
    GenerationRequest,
    PromptUsage,
    SamplingParams,
    Started,
)
from vlmserve.errors import InternalError, InvalidRequestError
from vlmserve.protocol.chat import ChatCompletionRequest
from vlmserve.serving.prepare import PreparedPrompt, PromptPreparer
from vlmserve.serving.tools import check_tool_history, output_constraints

DEFAULT_TEMPERATURE = 0.5  # the hosted platform's defaults (reference/step-api.md 2.1)
DEFAULT_TOP_P = 0.9
MAX_STOP_SEQUENCES = 16


@dataclass(slots=True)
class ChatRun:
    """A generation whose prompt was accepted: ``usage`` is known, ``events`` yields the rest."""

    id: str
    created: int
    model: str
    n: int
    usage: PromptUsage
    events: AsyncIterator[Event]
    named_tool: bool = False  # tool_choice names a function: its call ends with "stop" (OpenAI)

    async def aclose(self) -> None:
        """Stop the generation (client gone); safe to call twice."""
        await _aclose(self.events)


class ChatService:
    def __init__(self, preparer: PromptPreparer) -> None:
        self._preparer = preparer

    async def start(
        self,
        req: ChatCompletionRequest,
        tenant: str = "",
        reserve_tokens: Callable[[int], None] | None = None,
    ) -> ChatRun:
        """Validate, prepare media, and start generating; raises before anything is streamed.

        ``reserve_tokens`` (a key with a tokens-per-minute limit) is called before generating
        with the prompt's tokens, counted as billed, plus the most the answer may take; it raises
        to refuse the request.
        """
        sampling = sampling_params(req)
        constraints = output_constraints(req)
        check_tool_history(req.messages)
        prepared = await self._preparer.prepare(req.model, req.messages, tenant)
        if reserve_tokens is not None:
            reserve_tokens(await self._most_tokens(prepared, sampling))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        generation = GenerationRequest(
            request_id=request_id,
            prompt=prepared.prompt,
            sampling=sampling,
            tenant=tenant,
            response_format=constraints.response_format,
            tools=constraints.tools,
            tool_choice=constraints.tool_choice,
            parallel_tool_calls=constraints.parallel_tool_calls,
            context_window=prepared.spec.context_window,
        )
        events = aiter(prepared.engine.generate(generation))
        try:
            first = await anext(events)
        except BaseException:
            await _aclose(events)
            raise
        if not isinstance(first, Started):
            await _aclose(events)
            raise InternalError("the engine did not report the prompt before generating")
        named_tool = isinstance(constraints.tool_choice, dict)
        return ChatRun(
            request_id, int(time.time()), req.model, sampling.n, first.usage, events, named_tool
        )

    async def _most_tokens(self, prepared: PreparedPrompt, sampling: SamplingParams) -> int:
        """Prompt tokens plus every choice's ``max_tokens`` (or what the window leaves)."""
        usage = await prepared.engine.count_tokens(prepared.prompt)
        window = await self._preparer.context_window(prepared.spec, prepared.engine)
        room = max(0, window - usage.prompt_tokens)
        per_choice = min(sampling.max_tokens, room) if sampling.max_tokens is not None else room
        return usage.prompt_tokens + sampling.n * per_choice


def sampling_params(req: ChatCompletionRequest) -> SamplingParams:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"stop: at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stop)}.",
            param="stop",
        )
    if any(not s for s in stop):
        raise InvalidRequestError("stop: stop sequences must not be empty strings.", param="stop")
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=DEFAULT_TOP_P if req.top_p is None else req.top_p,
        max_tokens=req.max_tokens if req.max_tokens is not None else req.max_completion_tokens,
        n=req.n or 1,
        stop=stop,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        seed=req.seed,
    )


async def _aclose(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
