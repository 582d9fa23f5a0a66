"""Every family, one suite: each feature of the API on a tiny dummy model of each family, in process
(a ``LocalEngine`` with the prompt cache and one without, per family; model directories are built
once per session). A family that cannot do something must refuse with a clear 400, tested here.

To add a family: add its dummy builder (vlmserve/dummy/builders/), its engine family
(vlmserve/engine/local/families/), and its row in the capability tables below.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from tests.engine.local.helpers import (
    Result,
    collect,
    generate,
    image,
    media,
    request,
    start_engine,
    text_prompt,
)
from vlmserve.dummy import FAMILIES as ALL_FAMILIES
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.types import (
    Delta,
    Finished,
    FinishReason,
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    PromptUsage,
    Started,
    TextPart,
    ToolCall,
    ToolCallDelta,
)
from vlmserve.errors import ContextLengthError, UnsupportedContentError
from vlmserve.settings import EngineSettings

# Families whose media the prefix cache rebuilds from cached vision features (embedder.py); the
# others prefill prompts with media the model's own way (text-only prompts still hit).
ENCODER_CACHED = {"idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "mistral3"}
NATIVE_VIDEO = {"smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava_onevision"}
# (the others, idefics3, gemma3 and mistral3, get a video as labelled frames)
# Families whose KV cache the prefix cache cannot reuse: Gemma 3's sliding-window layers forget
# the start of long prompts (block_manager.supports); they report cached_tokens 0.
NO_PREFIX_KV = {"gemma3"}
# Families whose processor cannot take images and videos in one request.
NO_IMAGE_WITH_VIDEO = {"smolvlm"}

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = ({"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},)


@dataclass
class Engines:
    family: str
    on: LocalEngine  # prompt cache on
    off: LocalEngine  # prompt cache off


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def engines(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Iterator[Engines]:
    model = tiny_models[request.param]
    on = start_engine(model, max_num_seqs=4, dtype="float32")
    off = start_engine(model, dtype="float32", prompt_cache=False)
    yield Engines(request.param, on, off)
    asyncio.run(on.close())
    asyncio.run(off.close())


def count(engine: LocalEngine, prompt: Prompt) -> Any:
    return asyncio.run(engine.count_tokens(prompt))


def billed(usage: PromptUsage) -> PromptUsage:
    """What ``count_tokens`` can know of a request: not its ``cached_tokens``, which depend on
    the requests before it (Mistral 3's template writes a long default system prompt in front
    of every conversation, so any two of its prompts share whole KV blocks)."""
    return replace(usage, cached_tokens=0)


def user(*parts: TextPart | MediaPart) -> Message:
    return Message("user", tuple(parts))


def picture(width: int, height: int, seed: int = 0) -> tuple[MediaInput, ...]:
    return media(image(width, height, seed))


def video(num_frames: int = 4, seed: int = 0) -> MediaInput:
    frames = tuple(image(64, 48, seed + i) for i in range(num_frames))
    digest = hashlib.sha256(b"".join(f.tobytes() for f in frames)).hexdigest()
    times = tuple(float(i) for i in range(num_frames))
    return MediaInput("video", frames, digest, timestamps=times, fps=1.0)


def sized(edge: int, seed: int = 0) -> tuple[MediaInput, ...]:
    """A 4:3 picture whose longest edge is ``edge`` (what media makes of a detail budget)."""
    return picture(edge, max(1, edge * 3 // 4), seed)


def long_text(words: int = 400) -> str:
    return " ".join(f"word{i % 37} and" for i in range(words))


# --- text and images ---


def test_text_prompt_generates_and_bills_what_count_tokens_says(engines: Engines) -> None:
    prompt = text_prompt("Tell me about the sea.")
    result = generate(engines.on, request(prompt, max_tokens=6))
    assert result.started is not None
    assert billed(result.started.usage) == count(engines.on, prompt)
    assert result.started.usage.image_tokens == 0
    assert result.num_tokens[0] == 6 or result.finished[0] is FinishReason.STOP


def test_one_image_is_billed_as_image_tokens(engines: Engines) -> None:
    prompt = Prompt((user(TextPart("What is this?"), MediaPart(0)),), picture(100, 60))
    result = generate(engines.on, request(prompt, max_tokens=4))
    assert result.started is not None
    usage = result.started.usage
    assert usage.image_tokens > 0 and usage.video_tokens == 0
    assert billed(usage) == count(engines.on, prompt)


def test_images_across_turns_each_bill_as_alone(engines: Engines) -> None:
    first, second = picture(100, 60, 1) + picture(60, 100, 2)
    alone = [
        count(engines.on, Prompt((user(TextPart("Look."), MediaPart(0)),), (m,))).image_tokens
        for m in (first, second)
    ]
    prompt = Prompt(
        (
            user(TextPart("Look."), MediaPart(0)),
            Message("assistant", (TextPart("A picture."),)),
            user(TextPart("And this one?"), MediaPart(1)),
        ),
        (first, second),
    )
    result = generate(engines.on, request(prompt, max_tokens=3))
    assert result.started is not None
    assert result.started.usage.image_tokens == sum(alone)
    assert result.finished[0] in (FinishReason.STOP, FinishReason.LENGTH)


def test_detail_budgets_bound_image_tokens(engines: Engines) -> None:
    health = asyncio.run(engines.on.health())
    assert health.image_edges is not None, "every family must publish its detail budgets"
    low_edge, high_edge = health.image_edges
    assert 0 < low_edge <= high_edge

    def tokens(edge: int) -> int:
        prompt = Prompt((user(MediaPart(0), TextPart("Describe.")),), sized(edge))
        result = generate(engines.on, request(prompt, max_tokens=1))
        assert result.started is not None
        assert billed(result.started.usage) == count(engines.on, prompt)
        return result.started.usage.image_tokens

    low, high = tokens(low_edge), tokens(high_edge)
    assert 0 < low <= high
    if high_edge > low_edge:
        assert low < high, "a high-detail picture must cost more than a low-detail one"


# --- video ---


def test_video_is_billed_as_video_tokens(engines: Engines) -> None:
    prompt = Prompt((user(MediaPart(0), TextPart("What happens?")),), (video(),))
    result = generate(engines.on, request(prompt, max_tokens=3))
    assert result.started is not None
    usage = result.started.usage
    assert usage.video_tokens > 0 and usage.image_tokens == 0
    assert billed(usage) == count(engines.on, prompt)
    health = asyncio.run(engines.on.health())
    assert health.video_frame_tokens is not None and health.video_frame_tokens > 0


def test_native_video_families_hand_the_processor_a_video(engines: Engines) -> None:
    assert engines.on._loaded is not None
    family = engines.on._loaded.family
    assert family.native_video == (engines.family in NATIVE_VIDEO)


def test_image_with_video_works_or_is_refused_clearly(engines: Engines) -> None:
    prompt = Prompt(
        (user(MediaPart(0), MediaPart(1), TextPart("Compare.")),), (*picture(80, 60), video())
    )
    if engines.family in NO_IMAGE_WITH_VIDEO:
        with pytest.raises(UnsupportedContentError) as info:
            generate(engines.on, request(prompt, max_tokens=2))
        assert "separate" in info.value.message and info.value.status == 400
        return
    result = generate(engines.on, request(prompt, max_tokens=2))
    assert result.started is not None
    assert result.started.usage.image_tokens > 0 and result.started.usage.video_tokens > 0


# --- choices, streaming, constraints ---


def test_n_choices_each_finish(engines: Engines) -> None:
    req = request(text_prompt(), n=3, temperature=1.0, top_p=1.0, max_tokens=4, seed=3)
    result = generate(engines.on, req)
    assert set(result.finished) == {0, 1, 2}
    assert all(result.num_tokens[i] >= 1 for i in range(3))


def test_stream_starts_then_deltas_then_one_finish_per_choice(engines: Engines) -> None:
    result = generate(engines.on, request(text_prompt(), n=2, max_tokens=4))
    assert isinstance(result.events[0], Started)
    for index in (0, 1):
        mine = [e for e in result.events if getattr(e, "index", None) == index]
        assert isinstance(mine[-1], Finished)
        assert all(isinstance(e, Delta) for e in mine[:-1])


def test_json_schema_output_validates(engines: Engines) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}
    req = replace(
        request(text_prompt(), n=3, temperature=1.0, top_p=1.0, max_tokens=80, seed=5),
        response_format=fmt,
    )
    result = generate(engines.on, req)
    finished = [i for i, r in result.finished.items() if r is FinishReason.STOP]
    assert finished, "no choice finished inside 80 tokens"
    for index in finished:
        jsonschema.validate(json.loads(result.texts[index]), WEATHER)


def _calls(result: Result, index: int) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    for event in result.events:
        if isinstance(event, ToolCallDelta) and event.index == index:
            if event.id is not None:
                calls.append((event.name or "", ""))
            name, arguments = calls[event.call_index]
            calls[event.call_index] = (name, arguments + event.arguments)
    return calls


def test_tool_call_round_trip(engines: Engines) -> None:
    ask = user(TextPart("Weather in Paris for 2 days?"))
    req = replace(
        request(Prompt((ask,)), n=3, temperature=1.0, top_p=1.0, max_tokens=120, seed=7),
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    result = generate(engines.on, req)
    done = [i for i, r in result.finished.items() if r is FinishReason.TOOL_CALLS]
    assert done, f"no choice finished its call inside 120 tokens: {result.texts}"
    name, arguments = _calls(result, done[0])[0]
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER)
    # the call and its result go back as history; the model answers from them
    history = (
        ask,
        Message("assistant", (), tool_calls=(ToolCall("call_1", name, arguments),)),
        Message("tool", (TextPart('{"temp_c": 21}'),), tool_call_id="call_1"),
    )
    second = replace(request(Prompt(history), max_tokens=4), tools=TOOLS, tool_choice="auto")
    answer = generate(engines.on, second)
    assert answer.started is not None and result.started is not None
    assert answer.started.usage.prompt_tokens > result.started.usage.prompt_tokens
    assert answer.finished[0] in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS)


# --- caches ---


def test_prompt_cache_keeps_greedy_output_and_reports_cached_tokens(engines: Engines) -> None:
    prompt = text_prompt(long_text())
    assert count(engines.on, prompt).prompt_tokens > 600
    cold = generate(engines.on, request(prompt, max_tokens=6))
    warm = generate(engines.on, request(prompt, max_tokens=6))
    off = generate(engines.off, request(prompt, max_tokens=6))
    assert warm.started is not None and cold.started is not None
    if engines.family in NO_PREFIX_KV:
        assert warm.started.usage.cached_tokens == 0
    else:
        assert warm.started.usage.cached_tokens >= 512
        assert warm.started.usage.cached_tokens % 256 == 0
    assert warm.started.usage.prompt_tokens == cold.started.usage.prompt_tokens
    assert warm.text == cold.text == off.text


def first_logits(engine: LocalEngine, req: GenerationRequest) -> torch.Tensor:
    """The logits ``req``'s first token is sampled from."""
    assert engine._core is not None
    runner, seen = engine._core.runner, []
    sample = runner._sample

    def recording(seq: Any, state: Any, logits: torch.Tensor) -> dict[int, int]:
        seen.append(logits.clone())
        return sample(seq, state, logits)

    runner._sample = recording  # type: ignore[method-assign]
    try:
        generate(engine, req)
    finally:
        del runner._sample
    return seen[0]


def test_a_prompt_prefilled_in_chunks_answers_as_prefilled_whole(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    """The chunks before a prompt's last run the family's decoder without its head: the KV they
    leave (positions, M-RoPE, masks) must be what one whole forward leaves."""
    prompt = text_prompt(" ".join(f"chunk{i % 29} or" for i in range(400)))  # no cached prefix
    chunks = engines.on  # prompts with a prefix-cache plan take max_num_batched_tokens a step
    assert count(chunks, prompt).prompt_tokens > EngineSettings().max_num_batched_tokens
    whole = start_engine(tiny_models[engines.family], dtype="float32", max_num_batched_tokens=4096)
    try:
        want = first_logits(whole, request(prompt, max_tokens=1))
    finally:
        asyncio.run(whole.close())
    got = first_logits(chunks, request(prompt, max_tokens=1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_encoder_cache_hits_for_a_repeated_image(engines: Engines) -> None:
    pictures = picture(100, 60, seed=9)
    prompt = Prompt((user(TextPart("Once."), MediaPart(0)),), pictures)
    again = Prompt((user(TextPart("Twice, other words."), MediaPart(0)),), pictures)

    def hits() -> int:
        stats = asyncio.run(engines.on.health()).prompt_cache
        assert stats is not None
        return stats.num_encoder_hits

    before = hits()
    first = generate(engines.on, request(prompt, max_tokens=2))
    second = generate(engines.on, request(again, max_tokens=2))
    assert first.started is not None and second.started is not None
    if engines.family in ENCODER_CACHED:
        assert hits() == before + 1
    else:  # documented in docs/models.md: these families encode media on every prefill
        assert hits() == before


def test_context_overflow_is_a_400(engines: Engines) -> None:
    req = replace(request(text_prompt(long_text(50)), max_tokens=4), context_window=40)
    with pytest.raises(ContextLengthError) as info:
        generate(engines.on, req)
    assert info.value.status == 400 and "context window" in info.value.message


# --- batching ---


def test_concurrent_requests_answer_as_each_alone(engines: Engines) -> None:
    prompts = [
        text_prompt("First question about boats."),
        Prompt((user(TextPart("Second, with a picture."), MediaPart(0)),), picture(90, 70, 4)),
        text_prompt("Third question, a little longer than the first one."),
    ]
    alone = [generate(engines.on, request(p, f"a{i}", max_tokens=8)) for i, p in enumerate(prompts)]

    async def together() -> list[Result]:
        return list(
            await asyncio.gather(
                *(
                    collect(engines.on, request(p, f"b{i}", max_tokens=8))
                    for i, p in enumerate(prompts)
                )
            )
        )

    batched = asyncio.run(together())
    assert [r.text for r in batched] == [r.text for r in alone]
