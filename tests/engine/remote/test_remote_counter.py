"""The remote engine with a local ``TokenCounter``: its readiness, image budgets and counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.engine.remote.builders import MODEL, collect, conversation, flat_image, settings
from tests.engine.remote.upstream import UpstreamServer
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.types import EngineHealth, Prompt, PromptUsage, Started
from vlmserve.errors import OverloadedError

pytestmark = pytest.mark.anyio

EDGES = (384, 1536)
COUNTED = PromptUsage(prompt_tokens=123, image_tokens=64)


@dataclass
class FakeCounter:
    ready: bool = False
    started: int = 0
    closed: int = 0
    counted: list[Prompt] = field(default_factory=list)

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1

    async def count(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> PromptUsage:
        if not self.ready:
            raise OverloadedError("still loading", code="model_loading")
        self.counted.append(prompt)
        return COUNTED

    def health(self) -> EngineHealth:
        if not self.ready:
            return EngineHealth(False, "loading the processor of /m")
        return EngineHealth(True, "token counts from the processor of /m", image_edges=EDGES)


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
        health = await engine.health()
        assert health.ready and health.image_edges == EDGES
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
