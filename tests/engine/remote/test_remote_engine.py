"""The remote engine against fake vLLM replicas on loopback: streaming, usage, failures, routing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.engine.remote.builders import (
    collect,
    conversation,
    flat_image,
    running_engine,
    text_request,
)
from tests.engine.remote.upstream import UpstreamServer, prompt_tokens
from vlmserve.engine.types import Delta, Event, Finished, FinishReason, PromptUsage, Started
from vlmserve.errors import (
    ContextLengthError,
    InvalidRequestError,
    NotSupportedYetError,
    OverloadedError,
    TimeoutError_,
    UpstreamError,
    UpstreamOverloadedError,
)

pytestmark = pytest.mark.anyio

REPLY = "a red square on white"


def texts(events: list[Event], index: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta) and e.index == index)


def num_tokens(events: list[Event]) -> int:
    return sum(e.num_tokens for e in events if isinstance(e, Delta))


def served(replicas: list[UpstreamServer]) -> list[int]:
    return [len(r.upstream.requests) for r in replicas]


async def test_stream_is_reemitted_with_exact_usage(replicas: list[UpstreamServer]) -> None:
    async with running_engine(replicas) as engine:
        events = await collect(engine, text_request("describe it please"))
    assert isinstance(events[0], Started)
    assert events[0].usage == PromptUsage(prompt_tokens=5)
    assert texts(events) == REPLY
    assert num_tokens(events) == len(REPLY.split())
    assert events[-1] == Finished(0, FinishReason.STOP, usage=PromptUsage(prompt_tokens=5))
    assert sum(isinstance(e, Started) for e in events) == 1


async def test_usage_only_at_the_end_still_gives_started_first(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.continuous_usage = False
    async with running_engine(replicas) as engine:
        events = await collect(engine, text_request("describe it please"))
    assert events[0] == Started(PromptUsage(prompt_tokens=5))
    assert texts(events) == REPLY
    assert num_tokens(events) == len(REPLY.split())


async def test_cached_tokens_from_final_usage_supersede_started(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.cached_tokens = 4
    async with running_engine(replicas) as engine:
        events = await collect(engine, text_request("describe it please"))
    last = events[-1]
    assert isinstance(last, Finished)
    assert last.usage == PromptUsage(prompt_tokens=5, cached_tokens=4)


async def test_n_choices_each_get_deltas_and_a_finish(replicas: list[UpstreamServer]) -> None:
    async with running_engine(replicas) as engine:
        events = await collect(engine, text_request("hi", n=2))
    assert texts(events, 0) == texts(events, 1) == REPLY
    finishes = [e for e in events if isinstance(e, Finished)]
    assert [f.index for f in finishes] == [0, 1]
    assert num_tokens(events) == 2 * len(REPLY.split())


async def test_payload_sent_upstream_streams_with_usage_and_images_as_data_urls(
    replicas: list[UpstreamServer],
) -> None:
    async with running_engine(replicas) as engine:
        await collect(engine, conversation(1, flat_image((200, 30, 30))))
    (body,) = [b for r in replicas for b in r.upstream.requests]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    url = body["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


async def test_replica_down_before_streaming_loses_no_request(
    replicas: list[UpstreamServer],
) -> None:
    async with running_engine(replicas, health_interval_s=60) as engine:
        await wait_for(lambda: all(r.detail == "healthy" for r in engine.pool.replicas))
        replicas[1].stop()  # killed after its last health check: connections are refused
        results = await asyncio.gather(
            *(collect(engine, conversation(1, None, user=f"user{i}")) for i in range(12))
        )
        assert engine.pool.replicas[1].num_requests > 0  # it was tried...
        assert not engine.pool.replicas[1].is_up  # ...and marked down at once
    assert all(texts(events) == REPLY for events in results)
    assert served(replicas)[1] == 0
    assert sum(served(replicas)) == 12


async def test_overloaded_replica_fails_over_then_503_carries_retry_after(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.fail_status = 503
        r.upstream.behaviour.retry_after = "7"
    replicas[2].upstream.behaviour.fail_status = None
    async with running_engine(replicas, retries=2) as engine:
        events = await collect(engine, text_request())
        assert texts(events) == REPLY
        replicas[2].upstream.behaviour.fail_status = 503
        with pytest.raises(UpstreamOverloadedError) as info:
            await collect(engine, text_request())
    assert info.value.status == 503 and info.value.retry_after_s == 7.0


async def test_server_error_is_retried_once_on_another_replica(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.fail_status = 500
    async with running_engine(replicas) as engine:
        with pytest.raises(UpstreamError) as info:
            await collect(engine, text_request())
    assert "something went wrong" in info.value.message
    assert sum(served(replicas)) == 2  # the first try and one retry, no more


async def test_no_retry_once_streaming_started(replicas: list[UpstreamServer]) -> None:
    for r in replicas:
        r.upstream.behaviour.die_after_chunks = 2
    got: list[Event] = []
    async with running_engine(replicas) as engine:
        with pytest.raises(UpstreamError):
            async for event in engine.generate(text_request()):
                got.append(event)
    assert isinstance(got[0], Started) and texts(got) == "a red"
    assert sum(served(replicas)) == 1


async def test_upstream_4xx_becomes_invalid_request_with_the_reason(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.fail_status = 400
        r.upstream.behaviour.fail_message = "At most 2 image(s) may be provided in one prompt."
    async with running_engine(replicas) as engine:
        with pytest.raises(InvalidRequestError) as info:
            await collect(engine, text_request())
    assert info.value.status == 400
    assert "At most 2 image(s)" in info.value.message
    assert sum(served(replicas)) == 1  # a bad request is not retried


async def test_upstream_context_error_becomes_context_length_error(
    replicas: list[UpstreamServer],
) -> None:
    for r in replicas:
        r.upstream.behaviour.fail_status = 400
        r.upstream.behaviour.fail_message = (
            "This model's maximum context length is 4096 tokens. However, you requested 5000."
        )
    async with running_engine(replicas) as engine:
        with pytest.raises(ContextLengthError):
            await collect(engine, text_request())


async def test_catalogue_context_window_is_enforced(replicas: list[UpstreamServer]) -> None:
    import dataclasses

    async with running_engine(replicas) as engine:
        too_small = dataclasses.replace(text_request("one two three"), context_window=4)
        with pytest.raises(ContextLengthError):
            await collect(engine, too_small)
        tight = dataclasses.replace(text_request("one two three"), context_window=5 + 2)
        events = await collect(engine, tight)
    assert num_tokens(events) == 2
    assert [e.reason for e in events if isinstance(e, Finished)] == [FinishReason.LENGTH]


async def test_silent_replica_times_out_as_504(replicas: list[UpstreamServer]) -> None:
    for r in replicas:
        r.upstream.behaviour.first_chunk_delay_s = 2.0
    async with running_engine(replicas, read_timeout_s=0.2) as engine:
        started = time.monotonic()
        with pytest.raises(TimeoutError_) as info:
            await collect(engine, text_request())
    assert info.value.status == 504
    assert time.monotonic() - started < 1.5


async def test_replica_marked_down_then_back_up(replicas: list[UpstreamServer]) -> None:
    async with running_engine(replicas) as engine:
        await wait_for(lambda: all(r.detail == "healthy" for r in engine.pool.replicas))
        replicas[0].stop()
        await wait_for(lambda: not engine.pool.replicas[0].is_up)
        health = await engine.health()
        assert health.ready and "2 of 3 replicas up" in health.detail
        replicas[0].start()
        await wait_for(lambda: engine.pool.replicas[0].is_up)
        assert (await engine.health()).detail == "3 of 3 replicas up"


async def test_replica_serving_another_model_is_down(replicas: list[UpstreamServer]) -> None:
    replicas[2].upstream.behaviour.model = "other-model"
    async with running_engine(replicas) as engine:
        # Probes run concurrently: wait for all three verdicts, not only the one about replica 2.
        up = engine.pool.replicas
        await wait_for(lambda: up[0].detail == up[1].detail == "healthy" and not up[2].is_up)
        assert "not fake-vlm" in up[2].detail
        assert engine.pool.max_model_len() == 4096


async def test_six_turn_conversation_stays_on_one_replica(replicas: list[UpstreamServer]) -> None:
    async with running_engine(replicas) as engine:
        for user in range(9):
            image = flat_image((user * 20, 100, 200 - user * 20))
            for turn in range(1, 7):
                await collect(engine, conversation(turn, image, user=f"user{user}"))
    per_replica = [
        {b["messages"][1]["content"][1]["text"] for b in r.upstream.requests} for r in replicas
    ]
    for user in range(9):
        holders = [
            i for i, users in enumerate(per_replica) if f"user{user}: what is this?" in users
        ]
        assert len(holders) == 1, f"user{user} was served by replicas {holders}"
    assert sum(1 for users in per_replica if users) >= 2  # conversations do spread


async def test_abort_closes_the_upstream_stream(replicas: list[UpstreamServer]) -> None:
    for r in replicas:
        r.upstream.behaviour.chunk_delay_s = 0.2
    async with running_engine(replicas) as engine:
        request = text_request()
        events = engine.generate(request)
        first = [await anext(events), await anext(events)]
        await engine.abort(request.request_id)
        rest = [e async for e in events]
        await wait_for(lambda: sum(r.upstream.aborted for r in replicas) == 1)
    assert isinstance(first[0], Started)
    assert rest[-1] == Finished(0, FinishReason.ABORT)


async def test_count_tokens_asks_the_replica_tokenize(replicas: list[UpstreamServer]) -> None:
    request = conversation(2, flat_image((1, 2, 3)))
    async with running_engine(replicas) as engine:
        usage = await engine.count_tokens(request.prompt)
        events = await collect(engine, request)
        for r in replicas:
            r.upstream.behaviour.has_tokenize = False
        with pytest.raises(NotSupportedYetError) as info:
            await engine.count_tokens(request.prompt)
    assert isinstance(events[0], Started) and usage == events[0].usage
    assert info.value.status == 400 and "processor files" in info.value.message
    assert usage.prompt_tokens == prompt_tokens(replicas_requests(replicas)[0]["messages"])


async def test_generate_before_start_is_503() -> None:
    from vlmserve.catalog.spec import EngineBinding
    from vlmserve.engine.remote import RemoteEngine
    from vlmserve.settings import RemoteEngineSettings

    binding = EngineBinding(kind="remote", upstreams=("http://127.0.0.1:9/v1",))
    engine = RemoteEngine(binding, RemoteEngineSettings())
    with pytest.raises(OverloadedError):
        await collect(engine, text_request())
    assert not (await engine.health()).ready


def replicas_requests(replicas: list[UpstreamServer]) -> list[dict[str, Any]]:
    return [b for r in replicas for b in r.upstream.requests]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
