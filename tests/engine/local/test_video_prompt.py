"""Videos in the local engine: Qwen2-VL gets its own video input, idefics3 timestamped frames;
video tokens are billed as such, and counting equals what generation reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.engine.local.helpers import collect, media, request
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.families import family_for
from vlmserve.engine.local.prompt import PromptPreparer
from vlmserve.engine.types import MediaInput, MediaPart, Message, Prompt, TextPart

TIMES = (0.5, 1.5, 2.5, 3.5)


def preparer(model_dir: Path) -> PromptPreparer:
    processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return PromptPreparer(processor, family_for(model, processor))


@pytest.fixture(scope="module")
def idefics3(tiny_models: dict[str, Path]) -> PromptPreparer:
    return preparer(tiny_models["idefics3"])


@pytest.fixture(scope="module")
def qwen2_vl(tiny_models: dict[str, Path]) -> PromptPreparer:
    return preparer(tiny_models["qwen2_vl"])


def video(edge: int, identity: str = "v1") -> MediaInput:
    size = (edge, edge * 9 // 16)
    frames = tuple(Image.new("RGB", size, (40 * i, 90, 200 - 40 * i)) for i in range(len(TIMES)))
    return MediaInput("video", frames, identity, TIMES, fps=1.0)


def with_image(prep: PromptPreparer, *, image_first: bool = True) -> Prompt:
    low = (prep.family.image_edges() or (64, 64))[0]
    items = (*media(Image.new("RGB", (low, low), "white")), video(low))
    parts = (MediaPart(0), MediaPart(1)) if image_first else (MediaPart(1), MediaPart(0))
    return Prompt((Message("user", (*parts, TextPart("What happens?"))),), items)


def only_image(prep: PromptPreparer) -> Prompt:
    low = (prep.family.image_edges() or (64, 64))[0]
    image = media(Image.new("RGB", (low, low), "white"))
    return Prompt((Message("user", (MediaPart(0), TextPart("What happens?"))),), image)


def test_qwen2_vl_gets_a_native_video_and_bills_its_pad_tokens(qwen2_vl: PromptPreparer) -> None:
    prompt = with_image(qwen2_vl)
    text = qwen2_vl.render(prompt)
    assert text.count("<|video_pad|>") == 1 and "Frame at" not in text
    prepared = qwen2_vl.prepare(prompt)
    grid = prepared.model_inputs["video_grid_thw"]
    assert grid.tolist()[0][0] == len(TIMES) // 2  # two frames per temporal patch
    merge = qwen2_vl.processor.video_processor.merge_size
    assert prepared.usage.video_tokens == int(grid.prod()) // merge**2
    assert prepared.usage.image_tokens == qwen2_vl.prepare(only_image(qwen2_vl)).usage.image_tokens
    assert prepared.media_identities == (prompt.media[0].identity, "v1")


def test_idefics3_gets_timestamped_frames_billed_as_video_tokens(idefics3: PromptPreparer) -> None:
    prompt = with_image(idefics3, image_first=False)
    text = idefics3.render(prompt)
    assert [f"Frame at {t:.1f} s:" in text for t in TIMES] == [True] * len(TIMES)
    assert text.count("<image>") == len(TIMES) + 1
    prepared = idefics3.prepare(prompt)
    image_alone = idefics3.prepare(only_image(idefics3)).usage.image_tokens
    assert prepared.usage.image_tokens == image_alone  # the frames are not image tokens
    assert prepared.usage.video_tokens == len(TIMES) * image_alone  # same size as the image
    assert prepared.media_identities == (*(f"v1#{i}" for i in range(4)), prompt.media[0].identity)


def test_remote_usage_splits_frames_and_pictures_as_the_full_count_does(
    idefics3: PromptPreparer, qwen2_vl: PromptPreparer
) -> None:
    usage = idefics3.prepare(with_image(idefics3)).usage
    assert usage.video_tokens > 0 and usage.image_tokens > 0
    assert idefics3.media_tokens(with_image(idefics3)) == (usage.image_tokens, usage.video_tokens)
    assert qwen2_vl.media_tokens(with_image(qwen2_vl)) is None  # native video: a full count


def test_video_tokens_follow_the_frame_count(
    idefics3: PromptPreparer, qwen2_vl: PromptPreparer
) -> None:
    for prep in (idefics3, qwen2_vl):
        low = (prep.family.image_edges() or (64, 64))[0]
        two = MediaInput("video", video(low).frames[:2], "v2", TIMES[:2], 1.0)
        four = video(low)
        counts = [
            prep.prepare(Prompt((Message("user", (MediaPart(0),)),), (v,))).usage.video_tokens
            for v in (two, four)
        ]
        assert 0 < counts[0] < counts[1], (type(prep.family).__name__, counts)


def test_family_estimates_frame_cost_for_the_budget(
    idefics3: PromptPreparer, qwen2_vl: PromptPreparer
) -> None:
    for prep in (idefics3, qwen2_vl):
        estimate = prep.family.video_frame_tokens()
        low = (prep.family.image_edges() or (64, 64))[0]
        square = MediaInput("video", (Image.new("RGB", (low, low)),) * 2, "sq", (0.0, 1.0), 1.0)
        usage = prep.prepare(Prompt((Message("user", (MediaPart(0),)),), (square,))).usage
        assert estimate is not None and usage.video_tokens <= 2 * estimate


def test_counting_a_video_equals_what_generation_reports(engine: LocalEngine) -> None:
    low = 64
    prompt = Prompt((Message("user", (MediaPart(0), TextPart("Describe."))),), (video(low),))
    counted = asyncio.run(engine.count_tokens(prompt))
    result = asyncio.run(collect(engine, request(prompt, max_tokens=4)))
    assert (
        result.started is not None and result.started.usage.prompt_tokens == counted.prompt_tokens
    )
    assert result.started.usage.video_tokens == counted.video_tokens > 0
    assert sum(result.num_tokens.values()) > 0
