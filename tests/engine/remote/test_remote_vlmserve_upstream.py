"""Another ``vlmserve serve`` process as the upstream: the same API, and the usage it is asked
for (on every chunk with ``continuous_usage_stats``, else only in its last chunk)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess
from tests.engine.remote.builders import collect, conversation, photo_like
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import RemoteEngine
from vlmserve.engine.types import Delta, Finished, FinishReason, Started
from vlmserve.settings import RemoteEngineSettings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    from vlmserve.dummy import make_dummy_model

    model = make_dummy_model(Path(tmp_path_factory.mktemp("upstream")) / "m", "idefics3", "tiny")
    proc = ServerProcess(model)
    try:
        proc.wait_ready()
        yield proc, httpx.get(proc.api + "/models").json()["data"][0]["id"]
    finally:
        proc.stop()


async def test_image_conversation_through_a_vlmserve_replica(
    upstream: tuple[ServerProcess, str],
) -> None:
    proc, model = upstream
    binding = EngineBinding(kind="remote", upstreams=(proc.api,), upstream_model=model)
    engine = RemoteEngine(binding, RemoteEngineSettings())
    await engine.start()
    try:
        request = conversation(2, photo_like(1, (64, 64)))
        request = dataclasses.replace(
            request, sampling=dataclasses.replace(request.sampling, max_tokens=6)
        )
        events = await collect(engine, request)
        counted = await engine.count_tokens(request.prompt)
        health = await engine.health()
    finally:
        await engine.close()
    started, finished = events[0], events[-1]
    assert isinstance(started, Started) and started.usage.image_tokens > 0
    assert counted.prompt_tokens == started.usage.prompt_tokens
    assert isinstance(finished, Finished) and finished.reason is FinishReason.LENGTH
    assert finished.usage is not None
    assert finished.usage.prompt_tokens == started.usage.prompt_tokens
    assert sum(e.num_tokens for e in events if isinstance(e, Delta)) == 6
    assert health.ready and health.max_model_len is not None


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize("continuous_usage", [True, False])
async def test_usage_and_tool_prompt_counts_agree_with_the_replica(
    upstream: tuple[ServerProcess, str], continuous_usage: bool
) -> None:
    proc, model = upstream
    binding = EngineBinding(kind="remote", upstreams=(proc.api,), upstream_model=model)
    engine = RemoteEngine(binding, RemoteEngineSettings(continuous_usage=continuous_usage))
    await engine.start()
    try:
        request = dataclasses.replace(
            conversation(1, None),
            sampling=dataclasses.replace(conversation(1, None).sampling, max_tokens=4),
            tools=(TOOL,),
            tool_choice="none",
        )
        events = await collect(engine, request)
        counted = await engine.count_tokens(request.prompt, (TOOL,))
        bare = await engine.count_tokens(request.prompt)
    finally:
        await engine.close()
    started = events[0]
    assert isinstance(started, Started)
    assert counted.prompt_tokens == started.usage.prompt_tokens > bare.prompt_tokens
    assert sum(e.num_tokens for e in events if isinstance(e, Delta)) == 4
