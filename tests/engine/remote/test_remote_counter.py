"""The remote engine with a local ``TokenCounter``: its readiness, image budgets and counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from tests.engine.remote.builders import MODEL, collect, conversation, flat_image, settings
from tests.engine.remote.upstream import IMAGE_TOKENS, UpstreamServer
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.remote.probe import PROBE_TEXT
from vlmserve.engine.types import EngineHealth, Prompt, PromptUsage, Started, TextPart
from vlmserve.errors import OverloadedError

pytestmark = pytest.mark.anyio

EDGES = (384, 1536)
COUNTED = PromptUsage(prompt_tokens=123, image_tokens=64)


@dataclass
class FakeCounter:
    """Counts every prompt as ``COUNTED``, except the count check's probe picture, which it
    counts as the fake replica bills it with ``IMAGE_TOKENS`` per image (they agree)."""

    ready: bool = False
    started: int = 0
    closed: int = 0
    counted: list[Prompt] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1

    async def count(self, prompt: Prompt) -> PromptUsage:
        if not self.ready:
            raise OverloadedError("still loading", code="model_loading")
        if is_probe(prompt):
            return PromptUsage(probe_tokens(), image_tokens=IMAGE_TOKENS)
        self.counted.append(prompt)
        return COUNTED

    def processor_kwargs(self, prompt: Prompt) -> dict[str, Any]:
        return self.kwargs

    def health(self) -> EngineHealth:
        if not self.ready:
            return EngineHealth(False, "loading the processor of /m")
        return EngineHealth(True, "token counts from the processor of /m", image_edges=EDGES)


def is_probe(prompt: Prompt) -> bool:
    return any(
        isinstance(part, TextPart) and part.text == PROBE_TEXT
        for message in prompt.messages
        for part in message.parts
    )


def probe_tokens() -> int:
    """The fake replica's count of the probe: its text's words, one image, the role markers."""
    return len(PROBE_TEXT.split()) + IMAGE_TOKENS + 2


async def until_ready(engine: RemoteEngine, timeout_s: float = 5.0) -> EngineHealth:
    """The engine's health once it is ready (the count check runs right after loading)."""
    with anyio.fail_after(timeout_s):
        while not (health := await engine.health()).ready:  # noqa: ASYNC110 (polling is the test)
            await anyio.sleep(0.02)
    return health


def engine_with(counter: FakeCounter, servers: list[UpstreamServer]) -> RemoteEngine:
    binding = EngineBinding(
        kind="remote", upstreams=tuple(s.base_url for s in servers), upstream_model=MODEL
    )
    return RemoteEngine(binding, settings(), token_counter=counter)


async def test_not_ready_and_refusing_work_until_the_processor_is_loaded(
    replicas: list[UpstreamServer],
) -> None:
    counter = FakeCounter()
    engine = engine_with(counter, replicas)
    await engine.start()
    try:
        health = await engine.health()
        assert not health.ready and "loading the processor" in health.detail
        assert health.image_edges is None
        with pytest.raises(OverloadedError) as info:
            await collect(engine, conversation(1, flat_image((255, 0, 0))))
        assert info.value.code == "model_loading"
        assert all(not r.upstream.requests for r in replicas)  # nothing sized without budgets
        counter.ready = True
        health = await until_ready(engine)
        assert health.image_edges == EDGES
        assert "replicas up" in health.detail and "token counts from" in health.detail
    finally:
        await engine.close()
    assert (counter.started, counter.closed) == (1, 1)


async def test_counter_counts_tokens_without_asking_a_replica(
    replicas: list[UpstreamServer],
) -> None:
    counter = FakeCounter(ready=True)
    engine = engine_with(counter, replicas)
    await engine.start()
    try:
        request = conversation(2, flat_image((0, 0, 255)))
        assert await engine.count_tokens(request.prompt) == COUNTED
    finally:
        await engine.close()
    assert counter.counted == [request.prompt]
    assert all(not r.upstream.requests for r in replicas)


async def test_counter_gives_started_when_the_upstream_reports_usage_only_at_the_end(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.continuous_usage = False
    counter = FakeCounter(ready=True)
    engine = engine_with(counter, replicas)
    await engine.start()
    try:
        events = await collect(engine, conversation(1, None))
    finally:
        await engine.close()
    assert events[0] == Started(COUNTED)
