"""The remote engine with a local ``TokenCounter``: its readiness, image budgets and counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import pytest

from tests.engine.remote.builders import MODEL, collect, conversation, flat_image, settings
from tests.engine.remote.upstream import IMAGE_TOKENS, UpstreamServer
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.remote.probe import PROBE_TEXT
from vlmserve.engine.types import (
    EngineHealth,
    Finished,
    Prompt,
    PromptUsage,
    Started,
    TextPart,
)
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

    async def count(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> PromptUsage:
        if not self.ready:
            raise OverloadedError("still loading", code="model_loading")
        if is_probe(prompt):
            return PromptUsage(probe_tokens(), image_tokens=IMAGE_TOKENS)
        self.counted.append(prompt)
        return COUNTED

    async def media_tokens(self, prompt: Prompt) -> tuple[int, int]:
        usage = await self.count(prompt)
        return usage.image_tokens, usage.video_tokens

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
    for server in servers:  # the count check compares the fake's usage with FakeCounter's
        server.upstream.behaviour.completion_usage = True
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


async def not_ready_detail(engine: RemoteEngine, timeout_s: float = 5.0) -> str:
    """The health detail once every replica has been through the count check and failed it."""
    with anyio.fail_after(timeout_s):
        while "count check failed" not in (detail := (await engine.health()).detail):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert not (await engine.health()).ready
    return detail


async def test_replica_that_bills_pictures_differently_never_makes_the_engine_ready(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.image_tokens = IMAGE_TOKENS * 13  # an upscaling processor
    engine = engine_with(FakeCounter(ready=True), replicas)
    await engine.start()
    try:
        detail = await not_ready_detail(engine)
    finally:
        await engine.close()
    assert f"is {probe_tokens()} prompt tokens in vlmserve's count" in detail
    assert "--trust-request-mm-kwargs" in detail


async def test_replica_refusing_processor_options_is_told_which_flag_to_add(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.refuse_mm_kwargs = True
    counter = FakeCounter(ready=True, kwargs={"size": {"longest_edge": 320}})
    engine = engine_with(counter, replicas)
    await engine.start()
    try:
        detail = await not_ready_detail(engine)
    finally:
        await engine.close()
    assert "refused the processor options" in detail and "--trust-request-mm-kwargs" in detail
    sent = replicas[0].upstream.probes  # refused before recording: nothing billed
    assert not sent


async def test_processor_options_travel_with_every_picture_request(
    replicas: list[UpstreamServer],
) -> None:
    counter = FakeCounter(ready=True, kwargs={"size": {"longest_edge": 320}})
    engine = engine_with(counter, replicas)
    await engine.start()
    try:
        await until_ready(engine)
        await collect(engine, conversation(1, flat_image((255, 0, 0))))
    finally:
        await engine.close()
    bodies = [b for r in replicas for b in (*r.upstream.requests, *r.upstream.probes)]
    assert bodies and all(b["mm_processor_kwargs"] == counter.kwargs for b in bodies)


@pytest.mark.parametrize("shape", ["vllm", "sglang"])
async def test_image_tokens_come_from_the_replicas_usage_in_either_shape(
    replicas: list[UpstreamServer], shape: Literal["vllm", "sglang"]
) -> None:
    for r in replicas:
        r.upstream.behaviour.modality_usage = shape
    engine = engine_with(FakeCounter(ready=True), replicas)
    await engine.start()
    try:
        await until_ready(engine)
        events = await collect(engine, conversation(1, flat_image((0, 255, 0))))
    finally:
        await engine.close()
    final = [e for e in events if isinstance(e, Finished)][-1]
    assert final.usage is not None and final.usage.image_tokens == IMAGE_TOKENS


async def test_image_tokens_come_from_our_count_when_the_replica_sends_none(
    replicas: list[UpstreamServer],
) -> None:
    engine = engine_with(FakeCounter(ready=True), replicas)
    await engine.start()
    try:
        await until_ready(engine)
        events = await collect(engine, conversation(1, flat_image((0, 0, 255))))
    finally:
        await engine.close()
    started = events[0]
    final = [e for e in events if isinstance(e, Finished)][-1]
    assert isinstance(started, Started) and started.usage.image_tokens == COUNTED.image_tokens
    assert final.usage is not None and final.usage.image_tokens == COUNTED.image_tokens
    assert final.usage.prompt_tokens != COUNTED.prompt_tokens  # the bill is still the replica's
