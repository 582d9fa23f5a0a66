"""LocalEngine end to end on tiny dummy models of both families (CPU, offline)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.engine.local.helpers import (
    FAMILIES,
    collect,
    generate,
    image,
    image_prompt,
    media,
    request,
    start_engine,
    text_prompt,
    until,
    wait_ready,
)
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.families import family_for
from vlmserve.engine.local.prompt import PreparedPrompt, PromptPreparer
from vlmserve.engine.types import (
    Delta,
    Finished,
    FinishReason,
    GenerationRequest,
    MediaPart,
    Message,
    Prompt,
    SamplingParams,
    Started,
    TextPart,
)
from vlmserve.errors import (
    ContextLengthError,
    InternalError,
    InvalidRequestError,
    OverloadedError,
)
from vlmserve.settings import EngineSettings


def two_image_history() -> Prompt:
    return Prompt(
        (
            Message("system", (TextPart("Be brief."),)),
            Message("user", (TextPart("Look:"), MediaPart(0))),
            Message("assistant", (TextPart("A noisy picture."),)),
            Message("user", (MediaPart(1), TextPart("And this one?"))),
        ),
        media(image(seed=1), image(50, 80, seed=2)),
    )


def reference_greedy(model_dir: Path, prompt: Prompt, max_new_tokens: int) -> str:
    """What ``model.generate(do_sample=False)`` says for the same prepared input, in float32."""
    processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    dtype = torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    model.eval()  # type: ignore[no-untyped-call]
    prepared = PromptPreparer(processor, family_for(model, processor)).prepare(prompt)
    inputs = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in prepared.model_inputs.items()
    }
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos
        )
    text: str = processor.tokenizer.decode(out[0, prepared.num_tokens :], skip_special_tokens=True)
    return text


@pytest.fixture(scope="module", params=FAMILIES)
def float32_engine(
    request: pytest.FixtureRequest, tiny_models: dict[str, Path]
) -> Iterator[LocalEngine]:
    # float32 on every machine: there the engine computes what transformers computes. In
    # bfloat16 its decode step runs attention in float32 (decode_step._attention), more exact
    # than generate's bf16 kernel, so a near-tie between two tokens may go the other way.
    engine = start_engine(tiny_models[request.param], dtype="float32")
    yield engine
    asyncio.run(engine.close())


@pytest.mark.parametrize("make_prompt", [text_prompt, two_image_history])
def test_greedy_output_equals_model_generate(
    float32_engine: LocalEngine, make_prompt: object
) -> None:
    prompt = make_prompt()  # type: ignore[operator]
    result = generate(float32_engine, request(prompt, max_tokens=24))
    assert result.text == reference_greedy(Path(float32_engine.binding.model), prompt, 24)


def test_same_seed_reproduces_sampled_output(engine: LocalEngine) -> None:
    def sampled(seed: int) -> str:
        return generate(engine, request(temperature=1.0, top_p=0.95, seed=seed, max_tokens=16)).text

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)


def test_stop_string_cuts_output_before_it(engine: LocalEngine) -> None:
    full = generate(engine, request(max_tokens=24)).text
    stop = full[8:11]
    assert stop.strip(), "the tiny model's output is too short for this test"
    result = generate(engine, request(max_tokens=24, stop=("zzzz-never", stop)))
    assert result.text == full[: full.index(stop)]
    assert result.finished == {0: FinishReason.STOP}


def test_held_back_text_is_released_when_no_stop_string_completes(engine: LocalEngine) -> None:
    full = generate(engine, request(max_tokens=10)).text
    # A stop string that starts like the output's tail but never completes.
    stop = full[-2:] + "\x00never"
    result = generate(engine, request(max_tokens=10, stop=(stop,)))
    assert result.text == full
    assert result.finished == {0: FinishReason.LENGTH}


def test_max_tokens_finishes_with_length(engine: LocalEngine) -> None:
    result = generate(engine, request(max_tokens=5))
    assert result.num_tokens == {0: 5}
    assert result.finished == {0: FinishReason.LENGTH}


def test_prompt_over_the_model_window_raises_context_length_error(engine: LocalEngine) -> None:
    prompt = text_prompt("lorem ipsum dolor " * 4000)
    with pytest.raises(ContextLengthError) as info:
        generate(engine, request(prompt))
    count = asyncio.run(engine.count_tokens(prompt)).prompt_tokens
    assert count > 8192
    assert str(count) in info.value.message and "8192" in info.value.message
    assert info.value.status == 400


def test_prompt_over_the_catalogue_window_raises_context_length_error(
    engine: LocalEngine,
) -> None:
    prompt = text_prompt()
    count = asyncio.run(engine.count_tokens(prompt)).prompt_tokens
    req = GenerationRequest("r", prompt, SamplingParams(), context_window=count)
    with pytest.raises(ContextLengthError, match=f"{count} tokens long.*{count} tokens"):
        generate(engine, req)


def test_max_tokens_is_capped_by_what_the_context_leaves(engine: LocalEngine) -> None:
    prompt = text_prompt()
    count = asyncio.run(engine.count_tokens(prompt)).prompt_tokens
    for max_tokens in (None, 50):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        req = GenerationRequest("r", prompt, params, context_window=count + 3)
        result = generate(engine, req)
        assert result.num_tokens == {0: 3}
        assert result.finished == {0: FinishReason.LENGTH}


@pytest.mark.parametrize("make_prompt", [text_prompt, image_prompt, two_image_history])
def test_count_tokens_equals_started_usage(engine: LocalEngine, make_prompt: object) -> None:
    prompt = make_prompt()  # type: ignore[operator]
    counted = asyncio.run(engine.count_tokens(prompt))
    result = generate(engine, request(prompt, max_tokens=2))
    assert result.started == Started(counted)
    assert isinstance(result.events[0], Started)
    if prompt.media:
        assert 0 < counted.image_tokens < counted.prompt_tokens


def test_history_image_is_rendered_and_counted(engine: LocalEngine) -> None:
    both = asyncio.run(engine.count_tokens(two_image_history()))
    first = Prompt(two_image_history().messages[:2], media(image(seed=1)))
    only_first = asyncio.run(engine.count_tokens(first))
    assert both.image_tokens > only_first.image_tokens > 0


def test_n_choices_each_finish_with_their_own_index(engine: LocalEngine) -> None:
    result = generate(engine, request(n=3, temperature=1.0, seed=3, max_tokens=8))
    assert result.finished == {i: FinishReason.LENGTH for i in range(3)}
    assert result.num_tokens == {0: 8, 1: 8, 2: 8}
    assert len(set(result.texts.values())) > 1  # sampled choices differ
    assert [e for e in result.events if isinstance(e, Started)] == result.events[:1]


def test_greedy_n_choices_are_identical_to_one_choice(engine: LocalEngine) -> None:
    one = generate(engine, request(max_tokens=10)).text
    three = generate(engine, request(n=3, max_tokens=10))
    assert set(three.texts.values()) == {one}


def test_penalties_change_greedy_output_and_keep_choices_apart(engine: LocalEngine) -> None:
    # 48 tokens: long enough for the tiny models' greedy output to repeat itself.
    plain = generate(engine, request(max_tokens=48)).text
    penalised = generate(
        engine, request(max_tokens=48, n=2, frequency_penalty=2.0, presence_penalty=2.0)
    )
    assert penalised.texts[0] == penalised.texts[1] != plain


def test_closing_the_stream_aborts_and_frees_the_engine(engine: LocalEngine) -> None:
    async def scenario() -> float:
        stream = engine.generate(request(request_id="long", max_tokens=5000))
        deltas = 0
        async for event in stream:
            deltas += isinstance(event, Delta)
            if deltas == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        began = time.monotonic()
        result = await collect(engine, request(request_id="next", max_tokens=2))
        assert result.finished == {0: FinishReason.LENGTH}
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 2.0
    assert engine._core is not None
    assert not engine._core.scheduler.has_work()
    assert engine._core.runner.num_active == 0


def test_abort_by_request_id_finishes_the_stream_with_abort(engine: LocalEngine) -> None:
    async def scenario() -> dict[int, FinishReason]:
        finished: dict[int, FinishReason] = {}
        async for event in engine.generate(request(request_id="victim", n=2, max_tokens=5000)):
            if isinstance(event, Delta):
                await engine.abort("victim")
            if isinstance(event, Finished):
                finished[event.index] = event.reason
        return finished

    assert asyncio.run(scenario()) == {0: FinishReason.ABORT, 1: FinishReason.ABORT}


def test_aborting_a_queued_request_removes_it(engine: LocalEngine) -> None:
    one = start_engine(Path(engine.binding.model), max_num_seqs=1)

    async def scenario() -> tuple[set[FinishReason], set[FinishReason]]:
        first = asyncio.create_task(collect(one, request(request_id="a", max_tokens=300)))
        queued = asyncio.create_task(collect(one, request(request_id="b", max_tokens=300)))
        await until(lambda: one._core is not None and one._core.num_waiting == 1)
        await one.abort("b")
        return set((await first).finished.values()), set((await queued).finished.values())

    try:
        first, queued = asyncio.run(scenario())
    finally:
        asyncio.run(one.close())
    assert first == {FinishReason.LENGTH}
    assert queued == {FinishReason.ABORT}


def test_aborting_a_request_while_its_prompt_is_prepared_aborts_it(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine._preparer is not None
    prepare, release = engine._preparer.prepare, threading.Event()

    def slow_prepare(prompt: Prompt, *args: Any) -> PreparedPrompt:
        release.wait(10)
        return prepare(prompt, *args)

    monkeypatch.setattr(engine._preparer, "prepare", slow_prepare)

    async def scenario() -> tuple[Started | None, dict[int, FinishReason]]:
        job = asyncio.create_task(collect(engine, request(image_prompt(), "early", n=2)))
        await until(lambda: "early" in engine._preparing_ids)
        await engine.abort("early")
        release.set()
        result = await job
        return result.started, result.finished

    started, finished = asyncio.run(scenario())
    assert started is not None
    assert finished == {0: FinishReason.ABORT, 1: FinishReason.ABORT}


@pytest.mark.parametrize("max_num_seqs", [1, 3])
def test_concurrent_requests_all_complete_with_their_own_output(
    engine: LocalEngine, max_num_seqs: int
) -> None:
    prompts = [text_prompt(f"Question number {i}?") for i in range(4)] + [image_prompt()]
    expected = [generate(engine, request(p, max_tokens=8)).text for p in prompts]
    other = start_engine(Path(engine.binding.model), max_num_seqs=max_num_seqs)

    async def scenario() -> list[str]:
        jobs = [
            collect(other, request(p, request_id=str(i), max_tokens=8))
            for i, p in enumerate(prompts)
        ]
        return [r.text for r in await asyncio.gather(*jobs)]

    try:
        assert asyncio.run(scenario()) == expected
    finally:
        asyncio.run(other.close())


def test_queue_over_max_queue_is_overloaded(engine: LocalEngine) -> None:
    other = start_engine(Path(engine.binding.model), max_queue=1, max_num_seqs=1)

    async def scenario() -> None:
        running = other.generate(request(request_id="running", max_tokens=5000))
        assert isinstance(await anext(running), Started)
        waiting = asyncio.create_task(collect(other, request(request_id="waiting")))
        await asyncio.sleep(0.05)
        with pytest.raises(OverloadedError, match="waiting"):
            await collect(other, request(request_id="third"))
        await running.aclose()  # type: ignore[attr-defined]
        assert (await waiting).finished == {0: FinishReason.LENGTH}

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(other.close())


def test_a_failing_request_does_not_stop_the_step_thread(engine: LocalEngine) -> None:
    assert engine._core is not None
    runner = engine._core.runner
    original = runner.prefill

    def broken(seq: object, budget: int) -> tuple[int, dict[int, int] | None]:
        runner.prefill = original  # type: ignore[method-assign]
        raise RuntimeError("boom")

    runner.prefill = broken  # type: ignore[method-assign]
    with pytest.raises(InternalError, match="boom"):
        generate(engine, request())
    assert generate(engine, request(max_tokens=2)).finished == {0: FinishReason.LENGTH}


def test_text_with_the_reserved_image_token_is_rejected(engine: LocalEngine) -> None:
    assert engine._loaded is not None
    token = engine._loaded.processor.image_token
    with pytest.raises(InvalidRequestError, match="reserves"):
        asyncio.run(engine.count_tokens(text_prompt(f"hi {token}")))


def test_tool_turns_are_rendered_as_text(engine: LocalEngine) -> None:
    from vlmserve.engine.types import ToolCall

    prompt = Prompt(
        (
            Message("user", (TextPart("Weather?"),)),
            Message("assistant", (), tool_calls=(ToolCall("c1", "weather", '{"city": "Oslo"}'),)),
            Message("tool", (TextPart("sunny"),), tool_call_id="c1"),
        )
    )
    assert engine._preparer is not None
    text = engine._preparer.render(prompt)
    assert '"name": "weather"' in text and "<tool_response>\nsunny\n</tool_response>" in text
    assert generate(engine, request(prompt, max_tokens=2)).finished == {0: FinishReason.LENGTH}


def test_health_while_loading_and_after(tiny_models: dict[str, Path]) -> None:
    engine = LocalEngine(EngineBinding(model=str(tiny_models["qwen2_vl"])), EngineSettings())
    assert not asyncio.run(engine.health()).ready
    asyncio.run(engine.start())
    health = asyncio.run(engine.health())
    if not health.ready:  # loading takes a moment even for a tiny model
        assert "loading" in health.detail
        with pytest.raises(OverloadedError, match="loading") as info:
            generate(engine, request())
        assert info.value.code == "model_loading"
    wait_ready(engine)
    health = asyncio.run(engine.health())
    assert health.max_model_len == 8192
    assert health.image_edges is not None and health.image_edges[0] <= health.image_edges[1]
    asyncio.run(engine.close())
    assert not asyncio.run(engine.health()).ready
    with pytest.raises(OverloadedError):
        generate(engine, request())


def test_a_model_that_fails_to_load_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{not json")
    engine = LocalEngine(EngineBinding(model=str(tmp_path)), EngineSettings())
    asyncio.run(engine.start())
    deadline = time.monotonic() + 30
    while "failed" not in (health := asyncio.run(engine.health())).detail:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not health.ready and str(tmp_path) in health.detail
    with pytest.raises(OverloadedError, match="failed to load"):
        generate(engine, request())
    asyncio.run(engine.close())
