"""Incremental detokenization never emits half a character and loses no text."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.engine.local.helpers import FAMILIES
from vlmserve.engine.local.detokenizer import IncrementalDetokenizer

TEXT = "Hello, 世界! naïve café 🙂👍🏽 — done"


@pytest.mark.parametrize("family", FAMILIES)
def test_multibyte_characters_are_never_split(tiny_models: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.step(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detokenizer.flush() == TEXT
    assert len(ids) > len(TEXT.encode()) / 4  # the emoji really span several tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens_produce_no_text(tiny_models: dict[str, Path], family: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.step(tokenizer.eos_token_id) == ""
    assert detokenizer.flush() == ""
