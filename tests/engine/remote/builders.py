"""Small builders of engine requests: images with identities, conversations turn by turn."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from PIL import Image

from tests.engine.remote.upstream import UpstreamServer
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.types import (
    Event,
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    SamplingParams,
    TextPart,
)
from vlmserve.settings import RemoteEngineSettings

MODEL = "fake-vlm"


def identity_of(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()


def flat_image(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], 8):
        image.putpixel((x, size[1] // 2), (0, 0, 0))
    return image


def photo_like(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Many colours (a smooth gradient with noise), so the encoder picks JPEG."""
    image = Image.new("RGB", size)
    pixels = [
        ((x * 7 + seed * 13) % 256, (y * 5 + x * 3 + seed) % 256, (x * y + seed * 31) % 256)
        for y in range(size[1])
        for x in range(size[0])
    ]
    image.putdata(pixels)
    return image


def image_input(image: Image.Image) -> MediaInput:
    return MediaInput("image", (image,), identity_of(image))


def conversation(
    turns: int, image: Image.Image | None, system: str = "You describe images.", user: str = "u"
) -> GenerationRequest:
    """The request of turn ``turns`` (1-based): history of earlier turns included."""
    media = (image_input(image),) if image is not None else ()
    first: tuple[TextPart | MediaPart, ...] = (TextPart(f"{user}: what is this?"),)
    if image is not None:
        first = (MediaPart(0), *first)
    messages = [Message("system", (TextPart(system),)), Message("user", first)]
    for t in range(2, turns + 1):
        messages.append(Message("assistant", (TextPart(f"answer {t - 1}"),)))
        messages.append(Message("user", (TextPart(f"{user}: and question {t}?"),)))
    return GenerationRequest(f"req-{user}-{turns}", Prompt(tuple(messages), media))


def text_request(text: str = "hello", **sampling: Any) -> GenerationRequest:
    prompt = Prompt((Message("user", (TextPart(text),)),))
    return GenerationRequest(f"req-{text}", prompt, SamplingParams(**sampling))


def settings(**overrides: Any) -> RemoteEngineSettings:
    base: dict[str, Any] = {
        "health_interval_s": 0.05,
        "health_timeout_s": 0.5,
        "connect_timeout_s": 0.5,
        "read_timeout_s": 5.0,
    }
    return RemoteEngineSettings(**{**base, **overrides})


@asynccontextmanager
async def running_engine(
    servers: list[UpstreamServer], **overrides: Any
) -> AsyncIterator[RemoteEngine]:
    binding = EngineBinding(
        kind="remote",
        model="org/fake",
        upstreams=tuple(s.base_url for s in servers),
        upstream_model=MODEL,
    )
    engine = RemoteEngine(binding, settings(**overrides))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


async def collect(engine: RemoteEngine, request: GenerationRequest) -> list[Event]:
    return [event async for event in engine.generate(request)]
