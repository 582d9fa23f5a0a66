"""The direct decode step computes what transformers' forward computes, for every family it takes
(left-padded rows and M-RoPE included), and leaves the others to transformers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional

from tests.engine.local.helpers import generate, request, start_engine
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local.decode_step import DecodeStep
from vlmserve.engine.local.kv_cache import new_cache
from vlmserve.engine.local.loader import LoadedModel, load_model
from vlmserve.settings import EngineSettings

DIRECT = (
    "idefics3",
    "smolvlm",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "internvl",
    "llava_onevision",
    "mistral3",
)


def _load(
    tiny_models: dict[str, Path], family: str, dtype: str = "auto", **settings: Any
) -> LoadedModel:
    binding = EngineBinding(model=str(tiny_models[family]), dtype=dtype)
    return load_model(binding, EngineSettings(**settings))


# How close the direct step's logits stay to transformers': float32 computes the same
# operations; bfloat16 runs the step's attention in float32 (``_attention``), so the two differ
# by bf16 rounding (a few ulps of logits ~0.3), far below what a wrong computation gives.
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}


def _prefill(loaded: LoadedModel, prompt: list[int]) -> Any:
    cache = new_cache(loaded.model.config)
    with torch.inference_mode():
        loaded.model(
            input_ids=torch.tensor([prompt]), use_cache=True, **{loaded.cache_kwarg: cache}
        )
    return cache


def _group(loaded: LoadedModel, prompts: list[list[int]]) -> tuple[Any, list[int]]:
    """One cache holding every prompt's KV, left-padded to the longest (as decode groups are)."""
    longest = max(len(p) for p in prompts)
    caches = [_prefill(loaded, p) for p in prompts]
    for cache, prompt in zip(caches, prompts, strict=True):
        for layer in cache.layers:
            pad = (0, 0, longest - len(prompt), 0)
            layer.keys = functional.pad(layer.keys, pad)
            layer.values = functional.pad(layer.values, pad)
    group = caches[0]
    for i, layer in enumerate(group.layers):
        layer.keys = torch.cat([c.layers[i].keys for c in caches])
        layer.values = torch.cat([c.layers[i].values for c in caches])
    return group, [longest - len(p) for p in prompts]


def _steps_match_transformers(loaded: LoadedModel, prompts: list[list[int]], dtype: str) -> Any:
    """Four direct steps of ``prompts`` (left-padded to one group) against transformers'
    forward from the same caches; returns the step."""
    step = DecodeStep.of(loaded.model)
    assert step is not None
    theirs, pads = _group(loaded, prompts)
    ours, _ = _group(loaded, prompts)
    tokens = torch.tensor([[p[-1]] for p in prompts])
    for i in range(4):
        positions = torch.tensor([len(p) + i for p in prompts])
        rope = loaded.family.decode_positions(positions)
        length = theirs.get_seq_length() + 1
        mask = (torch.arange(length).unsqueeze(0) >= torch.tensor(pads).unsqueeze(1)).long()
        with torch.inference_mode():
            want = loaded.model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=rope,
                use_cache=True,
                logits_to_keep=1,
                **{loaded.cache_kwarg: theirs},
            ).logits[:, -1]
        got = step(tokens, rope, mask.bool() if any(pads) else None, ours)
        assert torch.allclose(got, want.float(), atol=TOLERANCE[dtype]), i
        tokens = want.argmax(-1, keepdim=True)
    assert ours.get_seq_length() == theirs.get_seq_length()
    return step


@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
@pytest.mark.parametrize("family", DIRECT)
@pytest.mark.parametrize("prompts", [[[5, 9, 14, 3, 7]], [[5, 9, 14, 3, 7, 11, 2, 8], [4, 6, 12]]])
def test_the_direct_step_gives_transformers_logits(
    tiny_models: dict[str, Path], family: str, prompts: list[list[int]], dtype: str
) -> None:
    _steps_match_transformers(_load(tiny_models, family, dtype), prompts, dtype)


def test_a_family_it_does_not_know_decodes_through_transformers(
    tiny_models: dict[str, Path],
) -> None:
    # Gemma 3: sandwich norms, scaled embeddings, sliding windows.
    assert DecodeStep.of(_load(tiny_models, "gemma3").model) is None


@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
def test_ministral3_steps_past_its_original_context_scale_queries_as_transformers_does(
    tiny_models: dict[str, Path], dtype: str
) -> None:
    # Ministral 3's attention scales queries by position (Llama 4's 1 + beta * log(1 +
    # floor(p / original context))): the tiny model's original context is 512 positions, so
    # these steps (positions 600-603, and 1030+ for a scale of 1 + beta * log 3) run scaled.
    loaded = _load(tiny_models, "mistral3", dtype)
    assert type(loaded.model.model.language_model.layers[0]).__name__ == "Ministral3DecoderLayer"
    prompts = [[(i * 7) % 300 + 20 for i in range(600)], [(i * 5) % 300 + 20 for i in range(1030)]]
    step = _steps_match_transformers(loaded, prompts, dtype)
    assert step.query_scale is not None


def test_the_setting_chooses_the_direct_step_and_both_answer_alike(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[int] = []
    real = DecodeStep.__call__

    def counted(self: DecodeStep, *args: Any) -> torch.Tensor:
        steps.append(1)
        return real(self, *args)

    monkeypatch.setattr(DecodeStep, "__call__", counted)
    texts, counts = [], []
    for direct in (True, False):
        steps.clear()
        engine = start_engine(tiny_models["idefics3"], direct_decode=direct)
        try:
            result = generate(engine, request(max_tokens=8))
        finally:
            asyncio.run(engine.close())
        assert sum(result.num_tokens.values()) == 8
        texts.append(result.text)
        counts.append(len(steps))
    assert counts == [7, 0]  # every step after the prefill's token, or none
    assert texts[0] == texts[1]


def test_a_bf16_steps_attention_is_float32_rounded_once_and_the_same_for_a_row_in_any_batch() -> (
    None
):
    # CPU flash attention in bf16 at one query per row cost half of an 8-row step; the step
    # computes it in float32 instead: the float32 answer rounded once, row by row.
    from vlmserve.engine.local.decode_step import _attention

    torch.manual_seed(0)
    q = torch.randn(8, 6, 1, 16).bfloat16()
    k, v = torch.randn(8, 2, 40, 16).bfloat16(), torch.randn(8, 2, 40, 16).bfloat16()
    keep = torch.ones(8, 1, 1, 40, dtype=torch.bool)
    keep[3, ..., :7] = False  # a left-padded row
    out = _attention(q, k, v, keep, 0.25)
    exact = functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=keep, scale=0.25, enable_gqa=True
    )
    assert out.dtype == torch.bfloat16 and torch.equal(out, exact.bfloat16())
    for row in range(8):
        alone = _attention(
            q[row : row + 1], k[row : row + 1], v[row : row + 1], keep[row : row + 1], 0.25
        )
        assert torch.equal(alone, out[row : row + 1]), row
