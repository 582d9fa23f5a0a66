"""``FakeEngine``: an EngineClient without a model, for API and serving tests.

It answers ``"echo: <the last user text>"`` one word per token, counts a prompt as its words plus
``IMAGE_TOKENS`` per image and ``FRAME_TOKENS`` per video frame (and the words of its tools' JSON,
which a real engine renders into the prompt), and honours max_tokens, stop strings, n, the context
window and abort.

Tools and JSON mode: with tools (tool_choice not "none") it calls each tool the last user text
names (the first tool when tool_choice is "required" and none is named; the named tool when one is
forced), with arguments ``{"echo": "<last user text>"}`` streamed in 8-character fragments; after
a ``tool`` message it answers ``"echo: <that result>"``. With a JSON response_format it answers
``{"echo": "<last user text>"}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.types import (
    Delta,
    EngineHealth,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    Prompt,
    PromptUsage,
    Started,
    TextPart,
    ToolCallDelta,
)
from vlmserve.errors import ContextLengthError
from vlmserve.settings import Settings

IMAGE_TOKENS = 10
FRAME_TOKENS = 4  # per sampled video frame
MAX_MODEL_LEN = 4096


class FakeEngine:
    def __init__(self, token_delay_s: float = 0.0, max_model_len: int = MAX_MODEL_LEN) -> None:
        self.token_delay_s = token_delay_s
        self.max_model_len = max_model_len
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def health(self) -> EngineHealth:
        return EngineHealth(
            True,
            "ready",
            self.max_model_len,
            image_edges=(512, 2048),
            video_frame_tokens=FRAME_TOKENS,
        )

    async def count_tokens(
        self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()
    ) -> PromptUsage:
        words = len(json.dumps(tools).split()) if tools else 0
        words += sum(
            len(part.text.split())
            for message in prompt.messages
            for part in message.parts
            if isinstance(part, TextPart)
        )
        images = IMAGE_TOKENS * sum(1 for m in prompt.media if m.kind == "image")
        videos = FRAME_TOKENS * sum(len(m.frames) for m in prompt.media if m.kind == "video")
        return PromptUsage(
            prompt_tokens=words + images + videos + 1, image_tokens=images, video_tokens=videos
        )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        usage = await self.count_tokens(request.prompt, request.tools or ())
        window = min(request.context_window or self.max_model_len, self.max_model_len)
        if usage.prompt_tokens >= window:
            raise ContextLengthError(
                f"The prompt has {usage.prompt_tokens} tokens; the context window is {window}.",
                param="messages",
            )
        yield Started(usage)
        words = ("echo: " + _last_user_text(request.prompt)).split()
        if request.response_format is not None:
            words = [json.dumps({"echo": _last_user_text(request.prompt)})]
        budget = min(request.sampling.max_tokens or window, window - usage.prompt_tokens)
        calls = _calls(request)
        self.running.add(request.request_id)
        try:
            for index in range(request.sampling.n):
                if calls:
                    for event in _call_events(index, calls, _last_user_text(request.prompt)):
                        yield event
                    continue
                async for event in self._choice(index, words, budget, request.sampling.stop):
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request.request_id)
            raise
        finally:
            self.running.discard(request.request_id)

    async def _choice(
        self, index: int, words: list[str], budget: int, stop: tuple[str, ...]
    ) -> AsyncIterator[Event]:
        text = ""
        for i, word in enumerate(words):
            if i >= budget:
                yield Finished(index, FinishReason.LENGTH)
                return
            piece = word if i == 0 else " " + word
            if any(s in text + piece for s in stop):
                yield Finished(index, FinishReason.STOP)
                return
            text += piece
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield Delta(index, piece, 1)
        yield Finished(index, FinishReason.STOP)


def _last_user_text(prompt: Prompt) -> str:
    for message in reversed(prompt.messages):
        if message.role in ("user", "tool"):
            return " ".join(p.text for p in message.parts if isinstance(p, TextPart))
    return ""


def _calls(request: GenerationRequest) -> list[str]:
    """The tools this answer calls (see the module docstring)."""
    choice = request.tool_choice
    if not request.tools or choice == "none" or request.prompt.messages[-1].role == "tool":
        return []
    if isinstance(choice, dict):
        return [choice["function"]["name"]]
    text = _last_user_text(request.prompt)
    names = [t["function"]["name"] for t in request.tools]
    named = [name for name in names if name in text]
    if not request.parallel_tool_calls:
        named = named[:1]
    return named or (names[:1] if choice == "required" else [])


def _call_events(index: int, names: list[str], text: str) -> list[Event]:
    events: list[Event] = []
    arguments = json.dumps({"echo": text})
    for call_index, name in enumerate(names):
        events.append(
            ToolCallDelta(index, call_index, id=f"call_fake{index}{call_index}", name=name)
        )
        for at in range(0, len(arguments), 8):
            events.append(ToolCallDelta(index, call_index, arguments=arguments[at : at + 8]))
            events.append(Delta(index, "", 1))
    events.append(Finished(index, FinishReason.TOOL_CALLS))
    return events


def fake_factory(engine: FakeEngine):  # type: ignore[no-untyped-def]
    def factory(binding: EngineBinding, settings: Settings) -> FakeEngine:
        return engine

    return factory
