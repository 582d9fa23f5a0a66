"""Dummy model directories load and run like hub downloads, offline."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vlmserve.dummy import FAMILIES, FAMILY_SHAPES, SHAPES, make_dummy_model
from vlmserve.dummy.build import SHAPES_BY_FAMILY, disk_size
from vlmserve.dummy.shapes import IDEFICS3_SHAPES, QWEN2_VL_SHAPES

TWO_TURNS = [
    {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    {"role": "user", "content": [{"type": "text", "text": "Are you sure? 你好 🙂"}]},
]
IMAGE_TOKEN = {
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "qwen3_vl": "<|image_pad|>",
    "internvl": "<IMG_CONTEXT>",
    "llava_onevision": "<image>",
    "gemma3": "<image_soft_token>",  # the template's <start_of_image>, expanded by the processor
    "mistral3": "[IMG]",  # one a token, in rows closed by [IMG_BREAK] / [IMG_END]
}
NFC_NORMALIZING = {  # Qwen2Tokenizer normalizes; byte-level and Gemma BPE keep the text
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "internvl",
    "llava_onevision",
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dummy")
    return {family: make_dummy_model(root / family, family, "tiny") for family in FAMILIES}


def _processor(path: Path) -> Any:
    return AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]


def _image() -> Image.Image:
    return Image.new("RGB", (80, 60), (200, 30, 40))


def test_families_and_shapes_are_published() -> None:
    assert {"idefics3", "qwen2_vl"} <= set(FAMILIES)
    assert {"tiny", "smolvlm-256m", "qwen2-vl-2b"} <= set(SHAPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_generates_from_a_two_turn_chat_with_an_image(
    tiny_dirs: dict[str, Path], family: str
) -> None:
    processor = _processor(tiny_dirs[family])
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    text = processor.apply_chat_template(TWO_TURNS, add_generation_prompt=True, tokenize=False)
    assert text.count(processor.image_token) == 1
    assert "Answer briefly." in text and "A red square." in text
    inputs = processor(text=text, images=[_image()], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[family])
    assert image_id == model.config.image_token_id
    assert 0 < int((inputs["input_ids"] == image_id).sum()) <= 64  # cheap images
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.isfinite(logits).all()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_stays_tiny(tiny_dirs: dict[str, Path], family: str) -> None:
    assert disk_size(tiny_dirs[family]) < 8_000_000


def test_qwen2_vl_tiny_model_runs_a_video(tiny_dirs: dict[str, Path]) -> None:
    processor = _processor(tiny_dirs["qwen2_vl"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs["qwen2_vl"])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    video = np.random.default_rng(0).integers(0, 255, (8, 90, 120, 3), dtype=np.uint8)
    inputs = processor(text=text, videos=[video], return_tensors="pt")
    num_video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert 0 < num_video_tokens <= 64
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_qwen2_vl_template_renders_video_parts(tiny_dirs: dict[str, Path]) -> None:
    processor = _processor(tiny_dirs["qwen2_vl"])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", FAMILIES)
def test_context_window_allows_long_prompts(tiny_dirs: dict[str, Path], family: str) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    assert model.config.text_config.max_position_embeddings >= 8192


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trips_unicode(tiny_dirs: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    text = "Hello, 世界! 这是一个测试。 Emoji: 🙂👍🏽🇫🇷 — naïve café\n\ttabs"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trips_any_text(tiny_dirs: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])

    # Qwen2's tokenizer NFC-normalizes like the real one; byte-level BPE keeps everything else.
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(max_size=40))
    def round_trips(text: str) -> None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = unicodedata.normalize("NFC", text) if family in NFC_NORMALIZING else text
        assert tokenizer.decode(ids) == expected

    round_trips()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_token_id_decodes(tiny_dirs: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    vocab_size = model.config.text_config.vocab_size
    assert len(tokenizer) == vocab_size
    assert all(tokenizer.convert_ids_to_tokens(i) for i in range(vocab_size))


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_is_a_token_generation_can_stop_on(tiny_dirs: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    assert tokenizer.eos_token_id in eos_ids
    # Gemma's tokenizer says <eos>; its generation_config adds <end_of_turn>, which ends a turn;
    # Mistral's </s> closes every assistant turn of its template
    assert tokenizer.eos_token in {"<end_of_utterance>", "<|im_end|>", "<eos>", "</s>"}
    turn_end = {"gemma3": "<end_of_turn>"}.get(family, tokenizer.eos_token)
    assert tokenizer.convert_tokens_to_ids(turn_end) in eos_ids


def test_idefics3_tokenizer_has_the_tile_tokens(tiny_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["idefics3"])
    tokens = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>"]
    tokens += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    for token in tokens:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id, token
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token


def test_qwen2_vl_tool_call_tokens_survive_decoding(tiny_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["qwen2_vl"])
    ids = tokenizer('<tool_call>{"a": 1}</tool_call>', add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<tool_call>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == '<tool_call>{"a": 1}</tool_call>'


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    a = load_file(make_dummy_model(tmp_path / "a", "qwen2_vl", seed=3) / "model.safetensors")
    b = load_file(make_dummy_model(tmp_path / "b", "qwen2_vl", seed=3) / "model.safetensors")
    c = load_file(make_dummy_model(tmp_path / "c", "qwen2_vl", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model family 'llava'"):
        make_dummy_model(tmp_path / "m", "llava")


def test_unknown_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown shape 'huge'"):
        make_dummy_model(tmp_path / "m", "idefics3", "huge")


def test_shape_of_another_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="belongs to family idefics3"):
        make_dummy_model(tmp_path / "m", "qwen2_vl", "smolvlm-256m")


def test_non_empty_target_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        make_dummy_model(tmp_path, "idefics3")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_every_family_has_a_tiny_shape() -> None:
    assert all("tiny" in shapes for shapes in SHAPES_BY_FAMILY.values())
    assert {f: tuple(s) for f, s in SHAPES_BY_FAMILY.items()} == FAMILY_SHAPES


def test_real_shapes_copy_the_released_dimensions() -> None:
    smol = IDEFICS3_SHAPES["smolvlm-256m"]
    assert (smol.text.hidden_size, smol.text.num_hidden_layers, smol.text.vocab_size) == (
        576,
        30,
        49280,
    )
    assert smol.image_seq_len == 64  # SmolVLM-256M-Instruct's processor_config.json
    qwen = QWEN2_VL_SHAPES["qwen2-vl-2b"]
    assert (qwen.text.hidden_size, qwen.text.num_hidden_layers, qwen.vision_depth) == (1536, 28, 32)
