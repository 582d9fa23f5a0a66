"""The automatic prompt cache on tiny models of both families: exact outputs, image-aware keys.

Greedy texts of random tiny models barely depend on the picture, so the checks that matter for
images compare the first token's logits too: with the cache they must equal a cache-off engine's
for the same prompt, and differ from those of the other picture.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.engine.local.helpers import FAMILIES, Result, collect, generate, request, start_engine
from vlmserve.engine.local import LocalEngine
from vlmserve.engine.local.block_manager import block_keys, salt
from vlmserve.engine.types import MediaInput, MediaPart, Message, Part, Prompt, Started, TextPart
from vlmserve.errors import NotSupportedYetError

BLOCK = 256


class Engines:
    """A cache-on and a cache-off engine over the same weights (float32: exact comparisons)."""

    def __init__(self, model: Path, max_num_seqs: int = 1) -> None:
        self.on = start_engine(model, max_num_seqs=max_num_seqs, dtype="float32")
        self.off = start_engine(model, dtype="float32", prompt_cache=False)
        self.logits: dict[tuple[int, str], torch.Tensor] = {}
        for engine in (self.on, self.off):
            _record_first_logits(engine, self.logits)

    def both(self, prompt: Prompt, rid: str, **sampling: object) -> tuple[Result, Result]:
        on = generate(self.on, request(prompt, rid, **sampling))
        off = generate(self.off, request(prompt, rid, **sampling))
        assert on.texts == off.texts
        assert on.started is not None and off.started is not None
        assert off.started.usage.cached_tokens == 0
        assert on.started.usage.prompt_tokens == off.started.usage.prompt_tokens
        cached = on.started.usage.cached_tokens
        assert cached % BLOCK == 0 and cached < on.started.usage.prompt_tokens
        return on, off

    def first_logits(self, engine: LocalEngine, rid: str) -> torch.Tensor:
        return self.logits[(id(engine), rid)]

    def close(self) -> None:
        for engine in (self.on, self.off):
            asyncio.run(engine.close())


def _record_first_logits(engine: LocalEngine, into: dict[tuple[int, str], torch.Tensor]) -> None:
    assert engine._core is not None
    runner = engine._core.runner
    sample = runner._sample

    def recording(seq: Any, state: Any, logits: torch.Tensor) -> dict[int, int]:
        into.setdefault((id(engine), seq.request_id), logits[0].clone())
        return sample(seq, state, logits)

    runner._sample = recording  # type: ignore[method-assign]


@pytest.fixture(scope="module", params=FAMILIES)
def engines(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Iterator[Engines]:
    pair = Engines(tiny_models[request.param])
    yield pair
    pair.close()


def words(tag: str, num: int = 300) -> str:
    """Text of a few hundred tokens, distinct per ``tag``."""
    return f"{tag}: " + " ".join(f"w{(i * 7) % 97}" for i in range(num))


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A deterministic noise picture: equal seeds, equal pixels (media identities say so)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def prompt(*parts: Part | Image.Image) -> Prompt:
    """One user message; pictures (from ``seeded``) become media named by their seed."""
    media: list[MediaInput] = []
    content: list[Part] = []
    for part in parts:
        if isinstance(part, Image.Image):
            media.append(MediaInput("image", (part,), f"img-{part.info['seed']}"))
            content.append(MediaPart(len(media) - 1))
        else:
            content.append(part)
    return Prompt((Message("user", tuple(content)),), tuple(media))


def seeded(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    image = picture(seed, size)
    image.info["seed"] = seed
    return image


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_repeated_prompt_hits_whole_blocks_and_keeps_greedy_output(engines: Engines) -> None:
    text = prompt(TextPart(words("repeat")))
    cold, _ = engines.both(text, "t1")
    warm, _ = engines.both(text, "t2")
    assert cold.started and warm.started
    num_tokens = warm.started.usage.prompt_tokens
    assert num_tokens > 2 * BLOCK
    assert cold.started.usage.cached_tokens == 0
    assert warm.started.usage.cached_tokens == (num_tokens - 1) // BLOCK * BLOCK
    assert_close(engines.first_logits(engines.on, "t2"), engines.first_logits(engines.off, "t2"))


def test_cat_pizza_alternation_never_reuses_the_other_images_blocks(engines: Engines) -> None:
    cat, pizza = seeded(1), seeded(2)
    text = TextPart(words("alternation"))
    cached = []
    for rid, image in [("cat1", cat), ("pizza1", pizza), ("cat2", cat), ("pizza2", pizza)]:
        on, _ = engines.both(prompt(image, text), rid)
        assert on.started is not None
        cached.append(on.started.usage.cached_tokens)
        assert_close(engines.first_logits(engines.on, rid), engines.first_logits(engines.off, rid))
    assert cached[:2] == [0, 0]  # the image sits in block 0: a new image is a new prefix
    assert cached[2] > 0 and cached[3] > 0
    off = engines.first_logits(engines.off, "cat1") - engines.first_logits(engines.off, "pizza1")
    assert off.abs().max() > 1e-3  # the pictures matter, so reusing the wrong KV would show


def test_appending_a_second_image_still_hits_the_first_images_blocks(engines: Engines) -> None:
    first = prompt(seeded(3), TextPart(words("append")))
    on, _ = engines.both(first, "a1")
    assert on.started is not None
    num_first = on.started.usage.prompt_tokens
    second = prompt(seeded(3), TextPart(words("append")), seeded(4), TextPart("And this one?"))
    on, _ = engines.both(second, "a2")
    assert on.started is not None
    assert on.started.usage.cached_tokens >= (num_first // BLOCK - 1) * BLOCK > 0
    assert_close(engines.first_logits(engines.on, "a2"), engines.first_logits(engines.off, "a2"))


# mistral3 as well: its embedder (embedder.Mistral3Embedder) slices an image's features at a
# block boundary that falls between its rows of [IMG] tokens.
@pytest.mark.parametrize("engines", [*FAMILIES, "mistral3"], indirect=True)
def test_image_split_by_a_block_boundary_gives_exact_logits(engines: Engines) -> None:
    image = seeded(5, (160, 120))  # a few tens of tokens in either family
    lead = _lead_that_splits_the_image(engines.on, image, words("split", 150))
    first = prompt(TextPart(lead), image, TextPart(words("split", 150)))
    engines.both(first, "s1")
    second = prompt(TextPart(lead), image, TextPart(words("split", 150) + " Why?"))
    on, _ = engines.both(second, "s2")
    assert on.started is not None and on.started.usage.cached_tokens >= BLOCK
    assert_close(engines.first_logits(engines.on, "s2"), engines.first_logits(engines.off, "s2"))


def _lead_that_splits_the_image(engine: LocalEngine, image: Image.Image, tail: str) -> str:
    """Text before ``image`` (then ``tail``) such that a block's last token is one of the image's
    placeholders. The tail matters: Mistral 3's template puts the image of a two-part turn first."""
    assert engine._preparer is not None
    for num in range(40, 200):
        lead = words("lead", num)
        prepared = engine._preparer.prepare(prompt(TextPart(lead), image, TextPart(tail)))
        span = prepared.media_span
        if span is not None and any(
            span[0] + 1 < end < span[1] - 1 for end in range(BLOCK, span[1], BLOCK)
        ):
            return lead
    raise AssertionError("no text length puts a block boundary inside the image")


def test_multi_turn_conversation_reuses_earlier_turns(engines: Engines) -> None:
    image = seeded(6)
    history: tuple[Message, ...] = ()
    cached = []
    for turn in range(3):
        media = (MediaInput("image", (image,), "img-6"),)
        first = (MediaPart(0),) if turn == 0 else ()
        user = Message("user", (*first, TextPart(words(f"turn{turn}", 120))))
        conversation = Prompt((*history, user), media)
        on, _ = engines.both(conversation, f"m{turn}", max_tokens=6)
        assert on.started is not None
        cached.append(on.started.usage.cached_tokens)
        history = (*history, user, Message("assistant", (TextPart(on.text),)))
    assert cached[0] == 0 and 0 < cached[1] < cached[2]


def test_a_finished_answer_leaves_the_blocks_it_completed(engines: Engines) -> None:
    assert engines.on._core is not None and engines.on._preparer is not None
    cache = engines.on._core.runner.prefix_cache
    assert cache is not None
    text = _prompt_ending_just_before_a_block_boundary(engines.on)
    kept: list[tuple[int, ...]] = []
    keep_answer = cache.keep_answer

    def recording(seq: Any, kv: Any) -> None:
        kept.append((*seq.prompt.token_ids, *seq.choices[0].output_ids[:-1]))
        keep_answer(seq, kv)

    cache.keep_answer = recording  # type: ignore[method-assign,assignment]
    try:
        engines.both(text, "k1", max_tokens=16)
    finally:
        cache.keep_answer = keep_answer  # type: ignore[method-assign]
    (token_ids,) = kept
    num_prompt = engines.on._preparer.prepare(text).num_tokens
    assert len(token_ids) // BLOCK > num_prompt // BLOCK  # the answer completed a block
    keys = block_keys(token_ids, (), salt(cache.model_name, ""), BLOCK)
    hit = cache.blocks.match(keys, token_ids)
    cache.blocks.release(hit)
    assert len(hit) == len(token_ids) // BLOCK


def _prompt_ending_just_before_a_block_boundary(engine: LocalEngine) -> Prompt:
    assert engine._preparer is not None
    for num in range(80, 400):
        text = prompt(TextPart(words("answer", num)))
        num_tokens = engine._preparer.prepare(text).num_tokens
        if num_tokens > BLOCK and BLOCK - 12 <= num_tokens % BLOCK < BLOCK - 2:
            return text
    raise AssertionError("no text length ends a prompt just before a block boundary")


def test_n_choices_share_one_cached_prefill(engines: Engines) -> None:
    text = prompt(seeded(7), TextPart(words("choices")))
    engines.both(text, "n1", n=3)
    on, _ = engines.both(text, "n2", n=3)
    assert on.started is not None and on.started.usage.cached_tokens > 0
    assert len(on.texts) == 3 and len(set(on.texts.values())) == 1


def test_started_event_reports_cached_tokens_before_any_text(engines: Engines) -> None:
    text = prompt(TextPart(words("stream")))
    engines.both(text, "st1")
    on, _ = engines.both(text, "st2")
    assert isinstance(on.events[0], Started) and on.events[0].usage.cached_tokens > 0


def test_same_image_in_a_new_conversation_skips_the_vision_tower(engines: Engines) -> None:
    image = seeded(8)
    engines.both(prompt(TextPart(words("first chat")), image), "e1")
    stats = asyncio.run(engines.on.health()).prompt_cache
    assert stats is not None
    on, _ = engines.both(prompt(TextPart(words("another chat")), image), "e2")
    after = asyncio.run(engines.on.health()).prompt_cache
    assert after is not None and on.started is not None
    assert on.started.usage.cached_tokens == 0  # different text first: no prefix in common
    assert after.num_encoder_hits == stats.num_encoder_hits + 1
    assert after.num_encoder_misses == stats.num_encoder_misses
    assert_close(engines.first_logits(engines.on, "e2"), engines.first_logits(engines.off, "e2"))


def test_videos_hit_only_the_same_video(engines: Engines) -> None:
    def clip(seed: int) -> MediaInput:
        frames = tuple(picture(seed + i) for i in range(4))
        return MediaInput("video", frames, f"video-{seed}", (0.0, 0.5, 1.0, 1.5), fps=2.0)

    def asking(video: MediaInput, question: str) -> Prompt:
        text = TextPart(words("video") + question)
        return Prompt((Message("user", (MediaPart(0), text)),), (video,))

    try:
        engines.both(asking(clip(30), " What happens?"), "vid1")
    except NotSupportedYetError:
        pytest.skip("this engine does not take video yet")
    other, _ = engines.both(asking(clip(40), " What happens?"), "vid2")
    again, _ = engines.both(asking(clip(30), " Why?"), "vid3")
    assert other.started is not None and again.started is not None
    assert other.started.usage.cached_tokens == 0 and again.started.usage.cached_tokens > 0
    assert_close(
        engines.first_logits(engines.on, "vid3"), engines.first_logits(engines.off, "vid3")
    )


def test_tenants_never_share_blocks(engines: Engines) -> None:
    text = prompt(TextPart(words("tenants")))
    alice = request(text, "alice")
    generate(engines.on, alice)
    bob = generate(engines.on, _with_tenant(request(text, "bob"), "bob"))
    assert bob.started is not None and bob.started.usage.cached_tokens == 0


def _with_tenant(req: Any, tenant: str) -> Any:
    from dataclasses import replace

    return replace(req, tenant=tenant)


def test_count_tokens_reports_no_cached_tokens(engines: Engines) -> None:
    text = prompt(TextPart(words("count")))
    engines.both(text, "c1")
    usage = asyncio.run(engines.on.count_tokens(text))
    assert usage.prompt_tokens > BLOCK and usage.cached_tokens == 0


def test_health_and_one_log_line_per_request(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    text = prompt(TextPart(words("observe")))
    with caplog.at_level(logging.INFO, logger="vlmserve.engine"):
        generate(engines.on, request(text, "o1"))
        generate(engines.on, request(text, "o2"))
    lines = [r.getMessage() for r in caplog.records if r.name == "vlmserve.engine"]
    assert len([line for line in lines if "request o2" in line]) == 1
    assert "cached" in lines[-1]
    stats = asyncio.run(engines.on.health()).prompt_cache
    assert stats is not None
    assert 0 < stats.request_hit_rate < 1 and 0 < stats.token_hit_rate < 1
    assert 0 < stats.kv_bytes <= stats.kv_max_bytes and stats.num_blocks > 0
    assert asyncio.run(engines.off.health()).prompt_cache is None


def test_unprovable_media_layout_falls_back_to_a_whole_prefill(engines: Engines) -> None:
    text = prompt(seeded(9), TextPart(words("fallback")))
    assert engines.on._core is not None
    cache = engines.on._core.runner.prefix_cache
    assert cache is not None and cache.embedder is not None
    layout = cache.embedder.layout
    cache.embedder.layout = lambda inputs, identities: None  # type: ignore[method-assign]
    try:
        engines.both(text, "f1")
        on, _ = engines.both(text, "f2")
    finally:
        cache.embedder.layout = layout  # type: ignore[method-assign]
    assert on.started is not None and on.started.usage.cached_tokens == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_requests_sharing_a_prefix_are_safe(
    family: str, tiny_models: dict[str, Path]
) -> None:
    pair = Engines(tiny_models[family], max_num_seqs=4)
    try:
        shared = words("shared")
        prompts = [prompt(seeded(10), TextPart(f"{shared} question {i}?")) for i in range(4)]

        async def together() -> list[Result]:
            reqs = [request(p, f"c{i}", max_tokens=8) for i, p in enumerate(prompts)]
            return await asyncio.gather(*(collect(pair.on, r) for r in reqs))

        results = asyncio.run(together())
        for i, (p, on) in enumerate(zip(prompts, results, strict=True)):
            off = generate(pair.off, request(p, f"c{i}", max_tokens=8))
            assert on.texts == off.texts
        cached = [r.started.usage.cached_tokens for r in results if r.started]
        assert cached[0] == 0 and all(c > 0 for c in cached[1:])
    finally:
        pair.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_eviction_under_memory_pressure_never_corrupts_a_running_request(
    family: str, tiny_models: dict[str, Path]
) -> None:
    pair = Engines(tiny_models[family], max_num_seqs=3)
    assert pair.on._core is not None
    cache = pair.on._core.runner.prefix_cache
    assert cache is not None
    block_bytes = _block_bytes(pair.on)
    cache.blocks.max_bytes = 4 * block_bytes  # fewer than three prompts' blocks
    try:
        prompts = [prompt(seeded(11 + i % 2), TextPart(words(f"evict{i % 3}"))) for i in range(9)]

        async def waves() -> list[Result]:
            results: list[Result] = []
            for start in range(0, len(prompts), 3):
                reqs = [
                    request(p, f"v{start + i}", max_tokens=10)
                    for i, p in enumerate(prompts[start : start + 3])
                ]
                results += await asyncio.gather(*(collect(pair.on, r) for r in reqs))
            return results

        results = asyncio.run(waves())
        for i, (p, on) in enumerate(zip(prompts, results, strict=True)):
            off = generate(pair.off, request(p, f"v{i}", max_tokens=10))
            assert on.texts == off.texts
        stats = asyncio.run(pair.on.health()).prompt_cache
        assert stats is not None
        assert stats.num_evicted_blocks > 0 and stats.kv_bytes <= 4 * block_bytes
        assert all(block.ref_count == 0 for block in cache.blocks._blocks.values())
    finally:
        pair.close()


def _block_bytes(engine: LocalEngine) -> int:
    assert engine._loaded is not None
    config = engine._loaded.model.config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    return int(per_token * BLOCK)
