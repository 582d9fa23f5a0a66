"""oneDNN-packed linear layers on the CPU: the same numbers as ``nn.Linear``, whatever the batch,
only where they pay (the decoder and an untied output head), and a way back for baselines."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local import packed_linear
from vlmserve.engine.local.cpu_features import cpu_has_native_bf16
from vlmserve.engine.local.loader import load_model
from vlmserve.engine.local.packed_linear import (
    PackedLinear,
    PackedPart,
    can_pack,
    pack_language_model,
    unpack_language_model,
)
from vlmserve.settings import EngineSettings

pytestmark = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.float32), reason="this torch build has no oneDNN"
)


def _packed(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, PackedLinear | PackedPart)]


class _Bare(nn.Module):
    """A decoder-only stand-in: no embeddings, no head; the decoder is the module itself."""

    def get_decoder(self) -> nn.Module:
        return self

    def get_output_embeddings(self) -> None:
        return None

    def get_input_embeddings(self) -> None:
        return None


class _Attention(_Bare):
    """The shape of transformers' attention and MLP: q/k/v and gate/up read the same input."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.q_proj = nn.Linear(64, 96, bias=bias)
        self.k_proj = nn.Linear(64, 32, bias=bias)
        self.v_proj = nn.Linear(64, 32, bias=False)
        self.gate_proj = nn.Linear(64, 128, bias=False)
        self.up_proj = nn.Linear(64, 128, bias=False)

    def projections(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.q_proj(x), self.k_proj(x), self.v_proj(x), self.gate_proj(x), self.up_proj(x)]


# bfloat16 is packed only where oneDNN computes it natively (what ``resolve_dtype`` picks there).
DTYPES = [
    torch.float32,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            not can_pack(torch.device("cpu"), torch.bfloat16), reason="no native bf16 here"
        ),
    ),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_packed_layer_computes_what_nn_linear_computes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96).to(dtype)
    packed = PackedLinear(linear)
    x = torch.randn(2, 7, 64).to(dtype)
    with torch.inference_mode():
        assert torch.allclose(packed(x).float(), linear(x).float(), atol=1e-5)
        assert packed(x).shape == (2, 7, 96) and packed(x).dtype == dtype


def test_bfloat16_is_packed_only_where_the_cpu_computes_it() -> None:
    native = cpu_has_native_bf16() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert can_pack(torch.device("cpu"), torch.bfloat16) == native
    assert not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("cuda"), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_row_gets_the_same_bits_alone_and_in_a_batch_of_any_size(dtype: torch.dtype) -> None:
    # Batched decoding must not change a request's logits: one kernel for every row count.
    torch.manual_seed(0)
    packed = PackedLinear(nn.Linear(576, 1536, bias=False).to(dtype))
    rows = torch.randn(16, 576).to(dtype)
    with torch.inference_mode():
        alone = packed(rows[:1])
        for m in (2, 3, 4, 8, 16):
            assert torch.equal(packed(rows[:m])[:1], alone), m


def test_loading_packs_the_decoder_and_head_but_not_the_vision_tower(
    tiny_models: dict[str, Path],
) -> None:
    loaded = load_model(EngineBinding(model=str(tiny_models["idefics3"])), EngineSettings())
    model = loaded.model  # float32, or bfloat16 on a CPU that computes it (packed as well)
    decoder_linears = [m for m in model.get_decoder().modules() if isinstance(m, nn.Linear)]
    assert decoder_linears == [] and len(_packed(model.get_decoder())) > 0
    assert isinstance(model.get_output_embeddings(), PackedLinear)
    vision = model.model.vision_model
    assert _packed(vision) == [] and any(isinstance(m, nn.Linear) for m in vision.modules())
    assert not any(isinstance(p, PackedLinear) for p in model.parameters())  # state stays plain


def test_the_setting_turns_packing_off(tiny_models: dict[str, Path]) -> None:
    settings = EngineSettings(cpu_packed_linear=False)
    loaded = load_model(EngineBinding(model=str(tiny_models["idefics3"])), settings)
    assert _packed(loaded.model) == []


def test_a_head_tied_to_the_embeddings_is_copied_only_within_its_budget(
    tiny_models: dict[str, Path],
) -> None:
    # gemma3 ties its output head to the input embeddings: packing it holds the vocabulary
    # matrix twice, so a big one (a 4B model's is 2.7 GB in float32) stays as it is.
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["gemma3"], dtype=torch.float32)
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embeddings.weight
    size = head.weight.numel() * head.weight.element_size()
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        assert pack_language_model(model, tied_head_max_bytes=size - 1) > 0
        assert model.get_output_embeddings() is head and type(head) is nn.Linear
        unpack_language_model(model)
        pack_language_model(model, tied_head_max_bytes=size)
        assert isinstance(model.get_output_embeddings(), PackedLinear)
        assert model.get_input_embeddings().weight is embeddings.weight  # lookups unchanged
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-4)


def test_unpacking_gives_back_the_same_model_output(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        tiny_models["qwen2_vl"], dtype=torch.float32
    )
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        packed = pack_language_model(model)
        during = model(input_ids=ids).logits
        assert unpack_language_model(model) == packed
        after = model(input_ids=ids).logits
    assert _packed(model) == []
    assert torch.allclose(during, before, atol=1e-4)
    assert torch.equal(after, before)


class _FourLayers(_Bare):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(
            *(nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(4))
        )

    def get_decoder(self) -> nn.Module:
        return self.decoder


def _originals_alive_at_each_pack(
    monkeypatch: pytest.MonkeyPatch, model: nn.Module, packer: type
) -> tuple[list[int], list[weakref.ref[torch.Tensor]]]:
    """How many of ``model``'s original linear weights are alive each time ``packer`` (the class
    that packs one layer or one set of siblings) is built; and weak references to them all."""
    weights = [weakref.ref(m.weight) for m in model.modules() if isinstance(m, nn.Linear)]
    alive: list[int] = []
    real = packer.__init__

    def watching(self: object, *args: Any) -> None:
        alive.append(sum(w() is not None for w in weights))
        real(self, *args)

    monkeypatch.setattr(packer, "__init__", watching)
    return alive, weights


def test_packing_frees_each_original_weight_before_packing_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Packing every layer while all the originals stayed alive needed twice the layers' memory:
    # a 3B model in float32 was killed for memory on a 24 GiB machine right after loading.
    model = _FourLayers()
    alive_at_each_pack, weights = _originals_alive_at_each_pack(monkeypatch, model, PackedLinear)
    assert pack_language_model(model) == 4
    assert alive_at_each_pack == [4, 3, 2, 1]  # the layers packed before are gone already
    assert all(w() is None for w in weights)


class _TwoLayers(_Bare):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Attention(bias=False) for _ in range(2))


def test_packing_siblings_frees_each_set_before_packing_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A list of the decoder's modules held every original q/k/v and gate/up linear until all
    # sets were packed: twice a 3B model's layers, killed for memory on a 24 GiB machine.
    model = _TwoLayers()
    alive_at_each_pack, weights = _originals_alive_at_each_pack(
        monkeypatch, model, packed_linear._SharedInput
    )
    assert pack_language_model(model) == 10
    assert alive_at_each_pack == [10, 7, 5, 2]  # the sets packed before are gone already
    assert all(w() is None for w in weights)


def _counting_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = torch.ops.mkldnn._linear_pointwise

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counted)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_siblings_reading_one_input_are_computed_in_one_call(
    monkeypatch: pytest.MonkeyPatch, bias: bool
) -> None:
    # Three narrow q/k/v reads cost twice what one stacked read does at decode.
    torch.manual_seed(0)
    model = _Attention(bias)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        expected = model.projections(x)
        assert pack_language_model(model) == 5
        calls = _counting_calls(monkeypatch)
        got = model.projections(x)
    assert len(calls) == 2  # one for q/k/v, one for gate/up
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape
        assert torch.allclose(have, want, atol=1e-5)


def test_a_sibling_called_out_of_pattern_still_gets_its_own_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sharing is keyed by the input: another input, or the same part asked twice, is
    # computed afresh rather than served a stale neighbour's result.
    torch.manual_seed(0)
    model = _Attention(bias=True)
    x, y = torch.randn(2, 64), torch.randn(2, 64)
    with torch.inference_mode():
        want_q, want_k, want_v = model.q_proj(x), model.k_proj(y), model.v_proj(y)
        pack_language_model(model)
        calls = _counting_calls(monkeypatch)
        assert torch.allclose(model.q_proj(x), want_q, atol=1e-5)
        assert torch.allclose(model.k_proj(y), want_k, atol=1e-5)
        assert torch.allclose(model.k_proj(y), want_k, atol=1e-5)
        assert torch.allclose(model.v_proj(y), want_v, atol=1e-5)
    assert len(calls) == 3  # x, y, and y again for the second k; v is served from the third


def test_a_stacked_row_gets_the_same_bits_alone_and_in_a_batch() -> None:
    torch.manual_seed(0)
    model = _Attention(bias=True)
    pack_language_model(model)
    rows = torch.randn(8, 64)
    with torch.inference_mode():
        alone = model.projections(rows[:1])
        for m in (2, 5, 8):
            batch = model.projections(rows[:m])
            assert all(torch.equal(b[:1], a) for a, b in zip(alone, batch, strict=True)), m


def test_unpacking_stacked_siblings_gives_back_each_layer() -> None:
    torch.manual_seed(0)
    model = _Attention(bias=True)
    before = {name: (m.weight.clone(), m.bias) for name, m in model.named_children()}
    pack_language_model(model)
    assert unpack_language_model(model) == 5
    for name, m in model.named_children():
        assert type(m) is nn.Linear
        weight, bias = before[name]
        assert torch.equal(m.weight, weight), name
        assert (m.bias is None) == (bias is None), name
        if bias is not None:
            assert torch.equal(m.bias, bias), name
