"""``ProcessorCounter``: the processor alone counts exactly as the loaded model's engine does."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from tests.engine.local.helpers import image, image_prompt, media, text_prompt
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.counter import ProcessorCounter
from vlmserve.engine.types import MediaPart, Message, Prompt, TextPart
from vlmserve.errors import OverloadedError


def loaded(directory: Path) -> ProcessorCounter:
    counter = ProcessorCounter(directory)
    asyncio.run(counter.start())
    deadline = time.monotonic() + 60
    while counter.health().detail.startswith("loading"):
        assert time.monotonic() < deadline, "the processor did not load in time"
        time.sleep(0.02)
    return counter


def two_images_in_history() -> Prompt:
    messages = (
        Message("system", (TextPart("Be brief."),)),
        Message("user", (MediaPart(0), TextPart("What is this?"))),
        Message("assistant", (TextPart("A noisy picture."),)),
        Message("user", (TextPart("And this one?"), MediaPart(1))),
    )
    return Prompt(messages, media(image(120, 80), image(40, 300, seed=3)))


def test_counts_and_image_edges_differ_from_the_engine_in_nothing(engine: LocalEngine) -> None:
    counter = loaded(Path(engine.binding.model))
    try:
        health = counter.health()
        assert health.ready and health.image_edges == asyncio.run(engine.health()).image_edges
        for prompt in (text_prompt(), image_prompt(), two_images_in_history()):
            counted = asyncio.run(counter.count(prompt))
            assert counted == asyncio.run(engine.count_tokens(prompt))
    finally:
        asyncio.run(counter.close())


def test_count_before_loading_is_503_not_a_wrong_number(tiny_models: dict[str, Path]) -> None:
    counter = ProcessorCounter(tiny_models["idefics3"])
    assert not counter.health().ready
    with pytest.raises(OverloadedError):
        asyncio.run(counter.count(text_prompt()))


def test_unloadable_processor_fails_with_the_reason_in_health(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["idefics3"], broken)
    (broken / "processor_config.json").write_text("{not json")
    counter = loaded(broken)
    health = counter.health()
    assert not health.ready
    assert "failed to load the processor" in health.detail and str(broken) in health.detail
    with pytest.raises(OverloadedError, match="failed to load"):
        asyncio.run(counter.count(text_prompt()))
