"""An offline byte-level BPE tokenizer that looks like a family's real one.

The vocabulary is laid out like the real tokenizers: optional special tokens at the very start
(SmolLM2's ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` at ids 0-2), then the 256 byte-level
symbols and merges learnt from ``corpus.CORPUS``, then filler pseudo-words up to the regular
vocabulary size, then the added tokens in their real order. The total length equals the model's
``vocab_size``, so every id a random model samples decodes to some text. Byte-level BPE round-trips
any UTF-8 text (Chinese, emoji) exactly.

``pipeline`` picks the pre-tokenization of the real tokenizer class, because transformers 5 rebuilds
``GPT2Tokenizer`` and ``Qwen2Tokenizer`` from tokenizer.json's vocab and merges with its own
pipeline: the file written here uses that same pipeline so both load paths encode alike.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from vlmserve.dummy.corpus import CORPUS

Pipeline = Literal["gpt2", "qwen2", "gemma", "tekken"]

# Gemma's SentencePiece-style BPE: spaces become "▁", unknown bytes fall back to <0xNN> tokens.
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))

# transformers' Qwen2Tokenizer split pattern (models/qwen2/tokenization_qwen2.py).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Mistral's Tekken split pattern (the ``pattern`` of mistral-common's tekken.json, which the
# releases' tokenizer.json splits with): no contractions, case-aware words, single digits.
TEKKEN_PRETOKENIZE_REGEX = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"""
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"""
    r"""\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True, slots=True)
class AddedSpec:
    content: str
    special: bool = True


@dataclass(frozen=True, slots=True)
class TokenizerSpec:
    pipeline: Pipeline
    vocab_size: int  # len(tokenizer), added tokens included
    leading_special: tuple[str, ...]  # part of the BPE vocab, ids 0..n-1
    added: tuple[AddedSpec, ...]  # appended after the regular vocab, in order

    @property
    def num_regular(self) -> int:
        return self.vocab_size - len(self.added)


def build_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    vocab, merges = _train_bpe(spec)
    if spec.pipeline == "gemma":
        for byte in BYTE_TOKENS:
            vocab.setdefault(byte, len(vocab))
    _fill_vocab(vocab, spec.num_regular, "▁" if spec.pipeline == "gemma" else "Ġ")
    if spec.pipeline == "gemma":  # GemmaTokenizer's own model: byte fallback, fused unknowns
        model = models.BPE(
            vocab=vocab, merges=merges, fuse_unk=True, unk_token="<unk>", byte_fallback=True
        )
    else:
        model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
    tokenizer = Tokenizer(model)
    _set_pipeline(tokenizer, spec.pipeline)
    leading = [AddedToken(t, special=True, normalized=False) for t in spec.leading_special]
    tokenizer.add_special_tokens(leading)
    for added in spec.added:
        token = AddedToken(added.content, special=added.special, normalized=False)
        if added.special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
    _check_layout(tokenizer, spec)
    return tokenizer


def _train_bpe(spec: TokenizerSpec) -> tuple[dict[str, int], list[tuple[str, str]]]:
    gemma = spec.pipeline == "gemma"
    trainer = trainers.BpeTrainer(
        vocab_size=spec.num_regular - (len(BYTE_TOKENS) if gemma else 0),
        special_tokens=list(spec.leading_special),
        initial_alphabet=[] if gemma else pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer = Tokenizer(models.BPE())
    _set_pipeline(tokenizer, spec.pipeline)
    tokenizer.train_from_iterator(CORPUS, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [_merge_pair(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left, right


def _fill_vocab(vocab: dict[str, int], size: int, space: str = "Ġ") -> None:
    """Pad the vocabulary with pseudo-words: unreachable by merges, but they decode to text."""
    words = _pseudo_words(space)
    while len(vocab) < size:
        word = next(words)
        if word not in vocab:
            vocab[word] = len(vocab)


def _pseudo_words(space: str = "Ġ") -> Iterator[str]:
    """``space``: the symbol a leading space is written as ("Ġ" byte-level, "▁" SentencePiece)."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    for length in itertools.count(1):
        for parts in itertools.product(syllables, repeat=length):
            yield space + "".join(parts)


def _set_pipeline(tokenizer: Tokenizer, pipeline: Pipeline) -> None:
    if pipeline == "gemma":  # transformers' GemmaTokenizer pipeline
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        tokenizer.pre_tokenizer = pre_tokenizers.Split(
            pattern=" ", behavior="merged_with_previous", invert=False
        )
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        return
    tokenizer.decoder = decoders.ByteLevel()
    if pipeline == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        return
    if pipeline == "tekken":  # byte-level BPE, no normalizer (tokenizers' TokenizersBackend)
        tokenizer.pre_tokenizer = _split_then_bytes(TEKKEN_PRETOKENIZE_REGEX)
        return
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _split_then_bytes(QWEN2_PRETOKENIZE_REGEX)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _check_layout(tokenizer: Tokenizer, spec: TokenizerSpec) -> None:
    if tokenizer.get_vocab_size(with_added_tokens=True) != spec.vocab_size:
        raise AssertionError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, not {spec.vocab_size}"
        )
    for i, token in enumerate(spec.leading_special):
        assert tokenizer.token_to_id(token) == i, token
    for i, added in enumerate(spec.added):
        assert tokenizer.token_to_id(added.content) == spec.num_regular + i, added.content
