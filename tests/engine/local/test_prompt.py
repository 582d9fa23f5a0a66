"""Prompt preparation: the chat template, image sizing per family, what counts as image tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.engine.local.helpers import image, media
from vlmserve.engine.local.families import Family, family_for
from vlmserve.engine.local.prompt import PromptPreparer
from vlmserve.engine.types import MediaPart, Message, Prompt, TextPart
from vlmserve.errors import InvalidRequestError


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


def one_image(width: int, height: int) -> Prompt:
    return Prompt((Message("user", (MediaPart(0), TextPart("?"))),), media(image(width, height)))


def image_tokens(prep: PromptPreparer, prompt: Prompt) -> int:
    return prep.prepare(prompt).usage.image_tokens


def test_idefics3_low_detail_image_is_one_tile_not_upscaled(idefics3: PromptPreparer) -> None:
    low, high = idefics3.family.image_edges() or (0, 0)
    seq_len = idefics3.processor.image_seq_len
    # one tile: <fake><global-img> + image_seq_len x <image> + <fake>
    assert image_tokens(idefics3, one_image(low, low * 3 // 4)) == seq_len + 3
    assert image_tokens(idefics3, one_image(high, high)) > 4 * seq_len


def test_idefics3_image_over_the_high_edge_costs_what_the_high_edge_costs(
    idefics3: PromptPreparer,
) -> None:
    _, high = idefics3.family.image_edges() or (0, 0)
    assert image_tokens(idefics3, one_image(high * 3, high * 3)) == image_tokens(
        idefics3, one_image(high, high)
    )


def test_qwen2_vl_edges_are_patch_multiples_and_ordered(qwen2_vl: PromptPreparer) -> None:
    edges = qwen2_vl.family.image_edges()
    assert edges is not None
    low, high = edges
    assert 0 < low <= high and low % 28 == 0 and high % 28 == 0


def test_qwen2_vl_image_tokens_are_the_image_pads(qwen2_vl: PromptPreparer) -> None:
    prepared = qwen2_vl.prepare(one_image(56, 56))
    pad = qwen2_vl.processor.image_token_id
    assert prepared.usage.image_tokens == prepared.token_ids.count(pad) == 4
    assert "mm_token_type_ids" in prepared.model_inputs


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_images_are_placed_where_their_parts_are(tiny_models: dict[str, Path], family: str) -> None:
    prep = preparer(tiny_models[family])
    prompt = Prompt(
        (
            Message("user", (TextPart("first"), MediaPart(1))),
            Message("assistant", (TextPart("ok"),)),
            Message("user", (MediaPart(0), TextPart("second"))),
        ),
        media(image(40, 40, seed=1), image(30, 50, seed=2)),
    )
    text = prep.render(prompt)
    token = prep.processor.image_token
    assert text.index("first") < text.index(token) < text.index("ok")
    assert text.count(token) == 2
    identities = (prompt.media[1].identity, prompt.media[0].identity)
    assert prep.prepare(prompt).media_identities == identities


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_remote_usage_image_tokens_without_processing_equal_the_full_count(
    tiny_models: dict[str, Path], family: str
) -> None:
    prep = preparer(tiny_models[family])
    high = (prep.family.image_edges() or (64, 64))[1]
    prompt = Prompt(
        (Message("user", (MediaPart(0), MediaPart(1), MediaPart(2), TextPart("?"))),),
        media(image(40, 40, seed=1), image(high + 30, high // 2, seed=2), image(40, 40, seed=3)),
    )
    usage = prep.prepare(prompt).usage
    assert usage.image_tokens > 0
    assert prep.media_tokens(prompt) == (usage.image_tokens, usage.video_tokens)
    assert prep.media_tokens(prompt) == (usage.image_tokens, 0)  # remembered sizes: same answer


def test_reference_to_missing_media_is_a_bad_request(qwen2_vl: PromptPreparer) -> None:
    prompt = Prompt((Message("user", (MediaPart(3),)),))
    with pytest.raises(InvalidRequestError, match="media #3"):
        qwen2_vl.prepare(prompt)


def test_unknown_families_fall_back_to_flat_images(qwen2_vl: PromptPreparer) -> None:
    family = Family(qwen2_vl.family.model, qwen2_vl.processor)
    pictures = [image()]
    assert family.nest_images(pictures) == pictures
    assert family.image_edges() is None


def test_a_conversation_the_template_rejects_is_a_bad_request(qwen2_vl: PromptPreparer) -> None:
    from unittest import mock

    template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with (
        mock.patch.object(qwen2_vl.processor, "chat_template", template),
        pytest.raises(InvalidRequestError, match="must alternate"),
    ):
        qwen2_vl.prepare(Prompt((Message("user", (TextPart("hi"),)),)))


@pytest.mark.parametrize("marker", ["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
def test_mistral3_image_row_markers_in_text_are_a_bad_request(
    tiny_models: dict[str, Path], marker: str
) -> None:
    prep = preparer(tiny_models["mistral3"])
    with pytest.raises(InvalidRequestError, match="reserves for media"):
        prep.prepare(Prompt((Message("user", (TextPart(f"a {marker} b"),)),)))


def test_mistral3_image_bills_its_rows_and_row_ends(tiny_models: dict[str, Path]) -> None:
    # 100x60 px at 28 px a token: 4 x 3 [IMG], a [IMG_BREAK] after rows 1-2, [IMG_END] after 3
    prep = preparer(tiny_models["mistral3"])
    assert image_tokens(prep, one_image(100, 60)) == 4 * 3 + 3
