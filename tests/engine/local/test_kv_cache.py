"""The decode cache appends in place: the same keys and values (and model output) as
transformers' ``DynamicCache``, without a copy of the whole cache per token, and never writing
into a tensor it did not allocate."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from vlmserve.engine.local import kv_cache
from vlmserve.engine.local.kv_cache import GrowingLayer, new_cache


def _kv(tokens: int, seed: int, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, 3, tokens, 8, generator=generator),
        torch.randn(rows, 3, tokens, 8, generator=generator),
    )


def test_appending_holds_what_concatenating_holds_without_copying_each_step() -> None:
    layer = GrowingLayer()
    keys, values = _kv(5, seed=0)
    layer.update(keys, values)
    store = layer.keys.data_ptr()  # type: ignore[union-attr]
    for step in range(1, kv_cache.ROOM + 2):
        new_keys, new_values = _kv(1, seed=step)
        seen_keys, seen_values = layer.update(new_keys, new_values)
        keys, values = torch.cat([keys, new_keys], -2), torch.cat([values, new_values], -2)
        assert torch.equal(seen_keys, keys) and torch.equal(seen_values, values)
        assert layer.get_seq_length() == 5 + step
        if step <= kv_cache.ROOM:  # the prefill's room holds ROOM more tokens
            assert layer.keys.data_ptr() == store, step  # type: ignore[union-attr]
    assert layer.keys.data_ptr() != store  # type: ignore[union-attr]  # room used up: grown


def test_a_tensor_assigned_from_outside_is_never_written_into() -> None:
    # The engine assigns views of other caches (a row of a shared prefill, a joined group):
    # appending into them would overwrite a neighbour's positions.
    layer = GrowingLayer()
    layer.update(*_kv(4, seed=0))
    shared_keys, shared_values = _kv(6, seed=1)
    before = shared_keys.clone(), shared_values.clone()
    layer.keys, layer.values = shared_keys[:, :, :3], shared_values[:, :, :3]
    keys, values = layer.update(*_kv(1, seed=2))
    assert keys.shape[-2] == values.shape[-2] == 4
    assert torch.equal(shared_keys, before[0]) and torch.equal(shared_values, before[1])
    assert torch.equal(keys[:, :, :3], before[0][:, :, :3])


def test_assigning_only_the_keys_never_exposes_unwritten_room() -> None:
    layer = GrowingLayer()
    layer.update(*_kv(4, seed=0))
    layer.keys = layer.keys[:, :, 1:]  # type: ignore[index]  # transformers' crop does one, then the other
    assert layer.values is not None and layer.values.shape[-2] == 4


def test_the_model_decodes_the_same_logits_as_with_a_dynamic_cache(
    tiny_models: dict[str, Path],
) -> None:
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_models["idefics3"], dtype=torch.float32
    )
    prompt = torch.tensor([[5, 9, 14, 3, 7, 11, 2]])

    def decode(cache: DynamicCache) -> torch.Tensor:
        logits = []
        with torch.inference_mode():
            out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            for step in range(kv_cache.ROOM + 3):  # past the room once
                position = torch.tensor([[prompt.shape[1] + step]])
                token = torch.tensor([[(7 * step) % 50 + 1]])
                out = model(
                    input_ids=token, position_ids=position, past_key_values=cache, use_cache=True
                )
                logits.append(out.logits[:, -1])
        return torch.cat(logits)

    assert torch.equal(decode(new_cache(model.config)), decode(DynamicCache(config=model.config)))


def test_sliding_window_layers_stay_as_transformers_makes_them(
    tiny_models: dict[str, Path],
) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["gemma3"], dtype=torch.float32)
    stock = [type(layer) for layer in DynamicCache(config=model.config).layers]
    ours = [type(layer) for layer in new_cache(model.config).layers]
    assert DynamicSlidingWindowLayer in stock
    assert ours == [GrowingLayer if kind is DynamicLayer else kind for kind in stock]
