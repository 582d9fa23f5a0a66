"""Continuous batching: a request's output must not depend on what runs beside it.

Engines run in float32 with the output layer scaled up (decisive logits: argmax never sits on a
near-tie), so greedy tokens alone and in a batch must be equal and the logits of every step close.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.local.helpers import (
    Result,
    collect,
    generate,
    image,
    image_prompt,
    media,
    request,
    start_engine,
    text_prompt,
    until,
)
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.vision_slices import vision_layers
from vlmserve.engine.types import (
    Event,
    FinishReason,
    GenerationRequest,
    MediaPart,
    Message,
    Prompt,
    TextPart,
    ToolCallDelta,
)
from vlmserve.errors import InternalError

TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Paris", "Rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
)
SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer", "maximum": 9}},
    "required": ["kind", "age"],
    "additionalProperties": False,
}


class Recorder:
    """Every logits row each request sampled from, and the largest decode batch seen."""

    def __init__(self, engine: LocalEngine) -> None:
        assert engine._core is not None
        runner = engine._core.runner
        self.logits: dict[str, list[torch.Tensor]] = {}
        self.max_rows = 0
        self.prefill_rows: list[int] = []  # rows of each padded prefill forward
        self.prefill_pads: list[list[int]] = []  # and the left padding of its rows
        sample, forward, padded = runner._sample, runner._decode_forward, runner._forward_padded

        def recording_sample(seq: Any, state: Any, logits: torch.Tensor) -> dict[int, int]:
            self.logits.setdefault(seq.request_id, []).append(logits.clone())
            return sample(seq, state, logits)

        def recording_forward(group: Any) -> torch.Tensor:
            self.max_rows = max(self.max_rows, group.num_rows)
            return forward(group)

        def recording_padded(rows: list[Any], pads: list[int]) -> Any:
            self.prefill_rows.append(len(rows))
            self.prefill_pads.append(list(pads))
            return padded(rows, pads)

        runner._sample = recording_sample  # type: ignore[method-assign]
        runner._decode_forward = recording_forward  # type: ignore[method-assign]
        runner._forward_padded = recording_padded  # type: ignore[method-assign]

    def clear(self) -> None:
        self.logits.clear()
        self.max_rows = 0
        self.prefill_rows.clear()
        self.prefill_pads.clear()


def decisive(path: Path, **settings: object) -> LocalEngine:
    engine = start_engine(path, dtype="float32", **settings)
    assert engine._loaded is not None
    with torch.no_grad():
        # The final norm's scale multiplies every logit (the output head may be oneDNN-packed).
        engine._loaded.model.get_decoder().norm.weight.mul_(8.0)
    return engine


@pytest.fixture(scope="module", params=["idefics3", "qwen2_vl"])
def batching(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Iterator[LocalEngine]:
    engine = decisive(tiny_models[request.param], max_num_seqs=8)
    yield engine
    asyncio.run(engine.close())


def alone_then_together(
    engine: LocalEngine,
    requests: list[GenerationRequest],
    run_together: Callable[[LocalEngine, list[GenerationRequest]], list[Result]] | None = None,
) -> tuple[list[Result], list[Result], Recorder, dict[str, list[torch.Tensor]]]:
    """Each request alone, then all at once (``run_together``; default: sent concurrently)."""
    recorder = Recorder(engine)
    alone = [asyncio.run(collect(engine, r)) for r in requests]
    alone_logits = dict(recorder.logits)
    assert recorder.prefill_rows == []  # one at a time: no prefill to share
    recorder.clear()

    async def concurrently() -> list[Result]:
        return list(await asyncio.gather(*(collect(engine, r) for r in requests)))

    together = run_together(engine, requests) if run_together else asyncio.run(concurrently())
    return alone, together, recorder, alone_logits


def assert_as_alone(
    alone: list[Result],
    together: list[Result],
    recorder: Recorder,
    alone_logits: dict[str, list[torch.Tensor]],
) -> None:
    """The same events as alone, and every step's logits close to alone's."""
    for a, t in zip(alone, together, strict=True):
        assert t.texts == a.texts
        assert t.num_tokens == a.num_tokens
        assert t.finished == a.finished
        assert_same(t, a)
    for rid, steps in recorder.logits.items():
        assert len(steps) == len(alone_logits[rid])
        for mine, theirs in zip(steps, alone_logits[rid], strict=True):
            torch.testing.assert_close(mine, theirs, atol=2e-3, rtol=1e-4)


def assert_same(got: Result, want: Result) -> None:
    """The same events; ``cached_tokens`` may differ (the prompt cache saw the prompt before)."""
    assert got.started is not None and want.started is not None
    assert replace(got.started.usage, cached_tokens=0) == replace(
        want.started.usage, cached_tokens=0
    )
    assert _no_ids(got.events[1:]) == _no_ids(want.events[1:])


def _no_ids(events: list[Event]) -> list[Event]:
    """Tool-call ids are random by design."""
    return [replace(e, id="") if isinstance(e, ToolCallDelta) and e.id else e for e in events]


def eight_requests() -> list[GenerationRequest]:
    two_images = Prompt(
        (Message("user", (TextPart("Compare"), MediaPart(0), MediaPart(1))),),
        media(image(80, 50, 1), image(40, 90, 2)),
    )
    prompts = [
        text_prompt("Hi"),
        text_prompt("Tell me a long story about a lighthouse keeper and her cat. " * 3),
        image_prompt(),
        text_prompt("What is two plus two?"),
        two_images,
        text_prompt("Name three colours."),
        image_prompt(),
        text_prompt("Why?"),
    ]
    return [
        request(p, f"r{i}", max_tokens=10 + 3 * i, n=2 if i in (1, 4) else 1)
        for i, p in enumerate(prompts)
    ]


def test_a_request_decodes_the_same_alone_and_in_a_batch_of_eight(
    batching: LocalEngine,
) -> None:
    requests = eight_requests()
    alone, together, recorder, alone_logits = alone_then_together(batching, requests)
    assert recorder.max_rows > 4  # rows of several sequences really shared a forward
    assert_as_alone(alone, together, recorder, alone_logits)


def test_mixed_constraints_and_sampling_behave_as_alone_in_one_batch(
    batching: LocalEngine,
) -> None:
    requests = [
        replace(
            request(text_prompt("A pet?"), "json", max_tokens=40),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "pet", "schema": SCHEMA},
            },
        ),
        replace(
            request(text_prompt("Weather in Rome?"), "tool", max_tokens=40),
            tools=TOOLS,
            tool_choice="required",
        ),
        request(
            text_prompt("Repeat repeat repeat"),
            "penalty",
            max_tokens=16,
            frequency_penalty=1.5,
            presence_penalty=0.5,
        ),
        request(text_prompt("Surprise me"), "seeded", max_tokens=16, temperature=1.0, seed=7, n=3),
        request(image_prompt(), "stop", max_tokens=16, stop=("e",)),
        request(text_prompt("Plain"), "plain", max_tokens=20),
    ]
    alone, together, _, _ = alone_then_together(batching, requests)
    for a, t in zip(alone, together, strict=True):
        assert_same(t, a)
    assert any(isinstance(e, ToolCallDelta) for e in alone[1].events)  # the grammar was on


def test_aborting_one_row_mid_batch_leaves_the_others_unchanged(batching: LocalEngine) -> None:
    requests = eight_requests()[:4]
    expected = [asyncio.run(collect(batching, r)) for r in requests]
    victim = request(text_prompt("I will be aborted"), "victim", max_tokens=500)

    async def scenario() -> tuple[list[Result], Result]:
        doomed = asyncio.create_task(collect(batching, victim))
        await until(lambda: _num_running(batching) == 1)
        others = asyncio.gather(*(collect(batching, r) for r in requests))
        await until(lambda: _num_running(batching) > 2)
        await batching.abort("victim")
        return list(await others), await doomed

    results, aborted = asyncio.run(scenario())
    assert [r.texts for r in results] == [r.texts for r in expected]
    assert aborted.finished == {0: FinishReason.ABORT}


def test_one_failing_row_fails_its_request_only(batching: LocalEngine) -> None:
    requests = eight_requests()[:4]
    expected = [asyncio.run(collect(batching, r)) for r in requests]
    calls = 0

    def explode(logits: torch.Tensor, rows: list[int], outputs: list[list[int]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # a few steps in, with the others decoding beside it
            raise RuntimeError("boom")

    async def failing() -> Result:
        core = batching._core
        assert core is not None
        submit = core.submit

        def with_processor(seq: Any) -> None:
            if seq.request_id == "failing":
                seq.logits_processors.append(explode)
            submit(seq)

        core.submit = with_processor  # type: ignore[method-assign]
        try:
            return await collect(batching, request(text_prompt("x"), "failing", max_tokens=50))
        finally:
            core.submit = submit  # type: ignore[method-assign]

    async def scenario() -> tuple[list[Result], BaseException | Result]:
        bad = asyncio.create_task(failing())
        others = await asyncio.gather(*(collect(batching, r) for r in requests))
        try:
            return list(others), await bad
        except InternalError as exc:
            return list(others), exc

    results, error = asyncio.run(scenario())
    assert isinstance(error, InternalError) and "boom" in str(error)
    assert [r.texts for r in results] == [r.texts for r in expected]


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_preemption_under_a_tiny_kv_budget_finishes_every_request_unchanged(
    tiny_models: dict[str, Path], family: str
) -> None:
    requests = [
        request(text_prompt(f"Question {i} " + "padding words " * i), f"p{i}", max_tokens=24, n=n)
        for i, n in enumerate((1, 2, 1, 1, 3))
    ] + [
        request(image_prompt(), "picture", max_tokens=24),
        request(text_prompt("Seeded"), "seeded", max_tokens=30, temperature=1.0, seed=3, n=2),
    ]
    roomy = decisive(tiny_models[family], max_num_seqs=8)
    assert roomy._core is not None
    per_token = roomy._core.runner.kv_bytes_per_token
    assert roomy._loaded is not None
    prompt_tokens = asyncio.run(roomy.count_tokens(image_prompt())).prompt_tokens
    budget = per_token * (prompt_tokens + 100)  # the picture alone fits, not much beside it
    tight = decisive(tiny_models[family], max_num_seqs=8, kv_cache_bytes=budget)
    try:
        expected = [asyncio.run(collect(roomy, r)) for r in requests]

        async def together() -> list[Result]:
            return list(await asyncio.gather(*(collect(tight, r) for r in requests)))

        results = asyncio.run(together())
        health = asyncio.run(tight.health())
    finally:
        asyncio.run(roomy.close())
        asyncio.run(tight.close())
    assert health.num_preemptions > 0
    assert health.kv_cache_max_bytes == budget
    for got, want in zip(results, expected, strict=True):
        assert_same(got, want)


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_output_and_one_head_per_token(
    tiny_models: dict[str, Path], family: str
) -> None:
    """Chunks before the prompt's last fill the cache through the decoder alone: the output
    head (a vocabulary-wide product) runs once per sampled token, never for those chunks."""
    prompt = Prompt(
        (Message("user", (TextPart("Describe " + "this picture carefully. " * 60), MediaPart(0))),),
        media(image(90, 70, 3)),
    )
    whole = decisive(tiny_models[family], max_num_batched_tokens=4096)
    chunked = decisive(tiny_models[family], max_num_batched_tokens=16)
    try:
        want = asyncio.run(collect(whole, request(prompt, "long", max_tokens=12)))
        recorder = Recorder(chunked)
        assert chunked._core is not None
        steps = 0
        step = chunked._core.step

        def counting() -> None:
            nonlocal steps
            steps += 1
            step()

        chunked._core.step = counting  # type: ignore[method-assign]
        assert chunked._loaded is not None
        head = chunked._loaded.model.get_output_embeddings()
        head_rows: list[int] = []
        hook = head.register_forward_hook(
            lambda _m, args, _out: head_rows.append(args[0].shape[:-1].numel())
        )
        try:
            got = asyncio.run(collect(chunked, request(prompt, "long", max_tokens=12)))
        finally:
            hook.remove()
    finally:
        asyncio.run(whole.close())
        asyncio.run(chunked.close())
    assert got.events == want.events
    assert got.started is not None
    assert steps > got.started.usage.prompt_tokens // 16  # the prompt took many steps
    assert len(recorder.logits["long"]) == 12
    assert head_rows == [1] * 12  # the first token's row, then one per decode step


def arriving_together(engine: LocalEngine, requests: list[GenerationRequest]) -> list[Result]:
    """Run ``requests`` with the step thread held until every one is queued, so that a single
    step admits them all."""
    core, started, gate = engine._core, threading.Event(), threading.Event()
    assert core is not None

    def hold() -> None:
        started.set()
        gate.wait(10)

    async def run() -> list[Result]:
        held = core.call(hold)
        await until(started.is_set)
        tasks = [asyncio.create_task(collect(engine, r)) for r in requests]
        await until(lambda: core.num_waiting == len(requests))
        gate.set()
        await asyncio.wrap_future(held)
        return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def four_questions() -> list[GenerationRequest]:
    questions = ("Name three colours.", "Name two rivers.", "What is two plus two?", "Name a bird.")
    return [
        request(text_prompt(q), f"t{i}", max_tokens=8, n=2 if i == 1 else 1)
        for i, q in enumerate(questions)
    ]


def test_prompts_arriving_together_share_one_prefill_forward_and_answer_as_alone(
    batching: LocalEngine,
) -> None:
    requests = four_questions()
    alone, together, recorder, alone_logits = alone_then_together(
        batching, requests, arriving_together
    )
    assert recorder.prefill_rows == [len(requests)]  # one padded forward for all four prompts
    assert_as_alone(alone, together, recorder, alone_logits)


def test_identical_long_prompts_arriving_together_still_reuse_each_others_blocks(
    batching: LocalEngine,
) -> None:
    words = " ".join(f"word{i}" for i in range(300))  # over 1,000 tokens: prefilled in chunks
    requests = [request(text_prompt(f"Summarise: {words}"), f"same{i}") for i in range(2)]
    first, second = arriving_together(batching, requests)
    assert first.started is not None and second.started is not None
    # the second prompt is planned once the first is in the cache: all its full blocks but the
    # last (whose last token must be computed) come from there
    total = second.started.usage.prompt_tokens
    assert second.started.usage.cached_tokens == (total - 1) // 256 * 256 > 0
    assert first.texts == second.texts


def test_pictures_arriving_together_share_a_prefill_once_encoded_and_answer_as_alone(
    batching: LocalEngine,
) -> None:
    # Image prompts: each picture is encoded in units first (a step each), then both prompts go
    # in one padded forward; on qwen2_vl with M-RoPE positions whose rope deltas differ per row.
    requests = [
        request(
            Prompt((Message("user", (TextPart(q), MediaPart(0))),), media(image(90, 60, seed))),
            f"p{seed}",
            max_tokens=8,
        )
        for seed, q in ((1, "What is this?"), (2, "Tell me what that is, in a few words."))
    ]
    alone, together, recorder, alone_logits = alone_then_together(
        batching, requests, arriving_together
    )
    assert recorder.prefill_rows == [2]
    assert max(recorder.prefill_pads[0]) > 0  # the shorter prompt really was left-padded
    assert_as_alone(alone, together, recorder, alone_logits)


def test_a_failed_shared_prefill_runs_its_prompts_one_by_one(batching: LocalEngine) -> None:
    assert batching._core is not None
    runner = batching._core.runner
    requests = four_questions()
    alone = [asyncio.run(collect(batching, r)) for r in requests]

    def broken(rows: list[Any], pads: list[int]) -> Any:
        raise RuntimeError("the shared prefill ran out of memory")

    runner._forward_padded = broken  # type: ignore[method-assign]
    try:
        together = arriving_together(batching, requests)
    finally:
        del runner._forward_padded  # the class's method again
    for a, t in zip(alone, together, strict=True):
        assert t.finished == a.finished
        assert t.texts == a.texts


def _num_running(engine: LocalEngine) -> int:
    return len(engine._core.scheduler.running) if engine._core else 0


def test_a_prompt_being_prepared_does_not_stall_running_streams(batching: LocalEngine) -> None:
    preparer = batching._preparer
    assert preparer is not None
    prepare, release = preparer.prepare, threading.Event()
    stalled = []

    def slow_prepare(prompt: Prompt, *args: Any) -> Any:
        if prompt.media:  # the newcomer's picture: held until the running stream is done
            stalled.append(not release.wait(10))  # on the step thread it would wait in vain
        return prepare(prompt, *args)

    async def scenario() -> tuple[Result, Result]:
        running = asyncio.create_task(collect(batching, request(request_id="run", max_tokens=30)))
        await until(lambda: _num_running(batching) == 1)
        newcomer = asyncio.create_task(collect(batching, request(image_prompt(), "new")))
        done = await running  # finishes while the newcomer's prompt is still being prepared
        release.set()
        return done, await newcomer

    preparer.prepare = slow_prepare  # type: ignore[method-assign]
    try:
        done, newcomer = asyncio.run(scenario())
    finally:
        preparer.prepare = prepare  # type: ignore[method-assign]
        release.set()
    assert stalled == [False]
    assert done.finished == {0: FinishReason.LENGTH}
    assert newcomer.finished == {0: FinishReason.LENGTH}


def test_a_big_picture_is_encoded_one_tile_per_step_between_decode_steps(
    tiny_models: dict[str, Path],
) -> None:
    engine = decisive(tiny_models["idefics3"], max_num_seqs=4)
    assert engine._core is not None and engine._core.runner.prefix_cache is not None
    runner, embedder = engine._core.runner, engine._core.runner.prefix_cache.embedder
    assert embedder is not None
    trace: list[str] = []
    encode_unit, decode_forward = embedder.encode_unit, runner._decode_forward

    def unit(*args: Any) -> torch.Tensor:
        trace.append("unit")
        return encode_unit(*args)

    def decode(group: Any) -> torch.Tensor:
        trace.append("decode")
        return decode_forward(group)

    embedder.encode_unit = unit  # type: ignore[method-assign]
    runner._decode_forward = decode  # type: ignore[method-assign]
    big = Prompt((Message("user", (TextPart("Look"), MediaPart(0))),), media(image(900, 700, 5)))

    async def scenario() -> Result:
        running = asyncio.create_task(collect(engine, request(request_id="run", max_tokens=200)))
        await until(lambda: "decode" in trace)
        result = await collect(engine, request(big, "big", max_tokens=2))
        await engine.abort("run")
        await running
        return result

    try:
        result = asyncio.run(scenario())
    finally:
        asyncio.run(engine.close())
    assert result.finished == {0: FinishReason.LENGTH}
    units = [i for i, what in enumerate(trace) if what == "unit"]
    assert len(units) > 2  # tiles and the global view, one each
    assert all(trace[i + 1] == "decode" for i in units)  # the stream went on between them


def trace_layers_and_decodes(engine: LocalEngine) -> list[str]:
    """'layer' before each vision layer runs, 'decode' for each decode forward, in order."""
    assert engine._core is not None and engine._loaded is not None
    runner, trace = engine._core.runner, []
    layers = vision_layers(engine._loaded.model)
    assert layers is not None
    for layer in layers:  # after the engine's own pause hook: records layers that do run
        layer.register_forward_pre_hook(lambda *_: trace.append("layer"))
    decode_forward = runner._decode_forward

    def decode(group: Any) -> torch.Tensor:
        trace.append("decode")
        return decode_forward(group)

    runner._decode_forward = decode  # type: ignore[method-assign]
    return trace


BIG = Prompt((Message("user", (TextPart("Look"), MediaPart(0))),), media(image(900, 700, 5)))


@pytest.mark.parametrize(
    ("family", "prompt_cache"),
    [("idefics3", True), ("idefics3", False), ("qwen3_vl", True)],
    ids=["tile-units", "whole-forward", "whole-forward-deepstack"],
)
def test_running_streams_decode_between_the_vision_layers_of_a_big_picture(
    family: str, prompt_cache: bool, tiny_models: dict[str, Path]
) -> None:
    # A slice of (almost) nothing: the encoding pauses before every layer but a call's first,
    # whether it runs as tile units (the prompt-cache path) or inside the model's own forward.
    engine = decisive(
        tiny_models[family], max_num_seqs=4, prompt_cache=prompt_cache, vision_slice_s=1e-9
    )
    layers = vision_layers(engine._loaded.model) if engine._loaded else None
    assert layers is not None
    try:
        trace = trace_layers_and_decodes(engine)

        async def scenario() -> Result:
            stream = request(request_id="run", max_tokens=400)
            running = asyncio.create_task(collect(engine, stream))
            await until(lambda: "decode" in trace)
            result = await collect(engine, request(BIG, "big", max_tokens=6))
            await engine.abort("run")
            await running
            return result

        beside = asyncio.run(scenario())
    finally:
        asyncio.run(engine.close())
    whole = decisive(tiny_models[family], prompt_cache=prompt_cache, vision_slice_s=0)
    try:
        alone = generate(whole, request(BIG, "alone", max_tokens=6))
    finally:
        asyncio.run(whole.close())
    assert trace.count("layer") >= len(layers)
    pairs = list(itertools.pairwise(trace))
    assert ("layer", "layer") not in pairs  # a decode step between any two layers
    assert beside.texts == alone.texts  # paused encodings compute the same features


def test_aborting_a_request_paused_inside_its_vision_encoding_frees_it(
    tiny_models: dict[str, Path],
) -> None:
    engine = decisive(tiny_models["idefics3"], max_num_seqs=4, vision_slice_s=1e-9)
    assert engine._core is not None
    runner = engine._core.runner
    trace = trace_layers_and_decodes(engine)

    def paused() -> bool:
        return any(s.prompt and s.prompt.paused for s in list(runner._states.values()))

    async def scenario() -> tuple[Result, Result]:
        running = asyncio.create_task(collect(engine, request(request_id="run", max_tokens=400)))
        await until(lambda: "decode" in trace)
        big = asyncio.create_task(collect(engine, request(BIG, "big", max_tokens=6)))
        await until(paused)
        await engine.abort("big")
        aborted = await big
        decodes = trace.count("decode")
        await until(lambda: trace.count("decode") > decodes + 3)  # the stream goes on
        await engine.abort("run")
        await running
        return aborted, await collect(engine, request(BIG, "again", max_tokens=6))

    try:
        aborted, again = asyncio.run(scenario())
        assert runner._states == {}
        alone = generate(engine, request(BIG, "alone", max_tokens=6))
    finally:
        asyncio.run(engine.close())
    assert aborted.finished == {0: FinishReason.ABORT}
    assert again.finished == {0: FinishReason.LENGTH}
    assert again.texts == alone.texts
