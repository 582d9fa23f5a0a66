"""Helpers for the local engine tests: prompts, requests, and collecting events."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.types import (
    Delta,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    SamplingParams,
    Started,
    TextPart,
)
from vlmserve.settings import EngineSettings

FAMILIES = ("idefics3", "qwen2_vl")


def start_engine(
    model: Path, *, max_num_seqs: int | None = None, **settings: object
) -> LocalEngine:
    engine = LocalEngine(
        EngineBinding(model=str(model)),
        EngineSettings(**settings),  # type: ignore[arg-type]
        max_num_seqs=max_num_seqs,
    )
    asyncio.run(engine.start())
    wait_ready(engine)
    return engine


def wait_ready(engine: LocalEngine, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (health := asyncio.run(engine.health())).ready:
        assert "failed" not in health.detail, health.detail
        assert time.monotonic() < deadline, "the engine did not load in time"
        time.sleep(0.02)


async def until(condition: Callable[[], bool], limit_s: float = 10) -> None:
    """Poll ``condition`` on the event loop (it reads state other threads change)."""
    for _ in range(int(limit_s / 0.001)):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached in time")


def image(width: int = 100, height: int = 60, seed: int = 0) -> Image.Image:
    return Image.effect_noise((width, height), 40 + seed).convert("RGB")


def media(*images: Image.Image) -> tuple[MediaInput, ...]:
    # Identities are content hashes, as media/identity.py makes them: the engine's encoder cache
    # keys on them (``image()`` is random noise, different at every call).
    return tuple(
        MediaInput("image", (im,), hashlib.sha256(im.tobytes()).hexdigest()) for im in images
    )


def text_prompt(text: str = "Tell me a story.") -> Prompt:
    return Prompt((Message("user", (TextPart(text),)),))


def image_prompt() -> Prompt:
    return Prompt((Message("user", (TextPart("What is this?"), MediaPart(0))),), media(image()))


def request(
    prompt: Prompt | None = None, request_id: str = "r", **sampling: object
) -> GenerationRequest:
    params = SamplingParams(**{"temperature": 0.0, "max_tokens": 12, **sampling})  # type: ignore[arg-type]
    return GenerationRequest(request_id, prompt or text_prompt(), params)


@dataclass
class Result:
    started: Started | None = None
    texts: dict[int, str] = field(default_factory=dict)
    num_tokens: dict[int, int] = field(default_factory=dict)
    finished: dict[int, FinishReason] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts.get(0, "")

    def add(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Started):
            self.started = event
        elif isinstance(event, Delta):
            self.texts[event.index] = self.texts.get(event.index, "") + event.text
            self.num_tokens[event.index] = self.num_tokens.get(event.index, 0) + event.num_tokens
        elif isinstance(event, Finished):
            self.finished[event.index] = event.reason


async def collect(engine: LocalEngine, req: GenerationRequest) -> Result:
    result = Result()
    async for event in engine.generate(req):
        result.add(event)
    return result


def generate(engine: LocalEngine, req: GenerationRequest) -> Result:
    return asyncio.run(collect(engine, req))
