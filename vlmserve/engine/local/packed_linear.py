"""The language model's linear layers as oneDNN-prepacked weights, on the CPU in float32 (and
in bfloat16 where the CPU computes it natively, ``can_pack``).

Decode multiplies a few rows (one per running sequence) by every weight matrix. PyTorch's
``F.linear`` sends that to MKL's sgemm, whose small-M kernels are slow: on this project's 2-core
machine a SmolVLM-256M decode step costs 57 ms at one row and ~100 ms at 2-8 rows, and its
49,280 x 576 output head alone takes 14-30 ms. oneDNN's inner product over a weight reordered
once into its blocked layout (what vLLM's CPU backend runs, and what inductor's ``weight_prepack``
emits) costs 48 ms at one row, 50 / 58 / 65 ms at 2 / 4 / 8 rows: one step of 8 rows for about
what MKL needs for 2. Every row's result is the same whatever the number of rows (one kernel for
all M), so a request decodes the same logits alone and in a batch. Sibling projections that
read the same input (q/k/v, gate/up) are packed as one stacked weight and computed in one call:
the narrow ones read memory at a third of the bandwidth alone (decode 45.6 -> 41.9 ms per step
on SmolVLM-256M, ``_SharedInput``).

Only the decoder's ``nn.Linear`` layers and the output head are packed: the vision tower runs
hundreds of rows per call, where MKL's large-M path is 10-20% faster than oneDNN's. The packed
weight replaces the original (same bytes), so memory does not grow, except for an output head
tied to the input embeddings: packing it copies the vocabulary matrix (the embedding lookup keeps
the dense one), so the loader packs it only when the copy is small beside the machine's memory
(a 0.5B Qwen2's 545 MB head: its decode 1.1x faster again; a 4B Gemma 3's 2.7 GB: left alone).
We call ``torch.ops.mkldnn`` directly because no library packs a transformers model's layers
in place; ``torch.compile``'s prepacking needs a compiled graph the engine's dynamic batch
(rows joining and leaving at any step, a growing cache) does not have, and dynamo cannot trace
the packed (opaque mkldnn) weights themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlmserve.engine.local.cpu_features import cpu_has_native_bf16

log = logging.getLogger(__name__)

# Sibling projections that transformers' decoder layers apply to one and the same input, in
# this order: attention's q/k/v and a gated MLP's gate/up. Packed as one weight each, so one
# oneDNN call reads all of them (see ``_SharedInput``).
SHARED_INPUT: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
)


class PackedLinear(nn.Module):
    """``nn.Linear`` computed by oneDNN over a prepacked weight (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with torch.no_grad():
            # A plain attribute, not a parameter: an mkldnn tensor has no strides, so
            # state_dict, .to() and parameter walks must not see it.
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpacked(self) -> nn.Linear:
        """The plain ``nn.Linear`` again (same weights): what stock transformers computes."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        if self.bias is not None:
            linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


class _SharedInput:
    """Several linears over the same input as one prepacked weight (their rows stacked): the
    first of them to see an input computes every output in one call; the others are served
    their part of it. At decode one SmolVLM-256M layer's q, k and v cost 107 + 60 + 60 us as
    three calls (the narrow k/v reads run at a third of the memory bandwidth) and gate + up
    2 x 170 us; stacked they are one wider, faster read. vLLM fuses the same way
    (``QKVParallelLinear``, ``MergedColumnParallelLinear``); we cannot rewrite transformers'
    forward, so the sharing is keyed by the input tensor itself: the same object, unchanged
    since (its version counter), gets the parts of one computation; any other input is
    computed afresh, so a caller that breaks the pattern is slower, never wrong."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.sizes = [linear.out_features for linear in linears]
        with torch.no_grad():
            weight = torch.cat([linear.weight.detach() for linear in linears])
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
            del weight
            biases = [linear.bias for linear in linears]
            self.bias = (
                None
                if all(b is None for b in biases)
                else torch.cat(
                    [
                        b.detach() if b is not None else _zeros(linear)
                        for b, linear in zip(biases, linears, strict=True)
                    ]
                )
            )
        self._input: torch.Tensor | None = None
        self._version = -1
        self._parts: tuple[torch.Tensor, ...] = ()
        self._served: set[int] = set()

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every sibling's output for ``x``, in order (one call, nothing kept)."""
        out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out.split(self.sizes, -1)

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        version = _version(x)
        if self._input is not x or version != self._version or index in self._served:
            self._parts, self._input, self._version = self.outputs(x), x, version
            self._served = set()
        self._served.add(index)
        part = self._parts[index]
        if len(self._served) == len(self.sizes):  # every part handed out: hold nothing
            self._input, self._parts = None, ()
        return part

    def dense(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        start = sum(self.sizes[:index])
        rows = slice(start, start + self.sizes[index])
        bias = None if self.bias is None else self.bias[rows].clone()
        return self.packed.to_dense()[rows].clone(), bias


def stacked_call(
    *linears: nn.Module,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None:
    """One call giving every output of ``linears`` when they are, in order, the whole set of
    one stacked weight (for callers that hold the input themselves); None otherwise."""
    first = linears[0]
    if not isinstance(first, PackedPart):
        return None
    shared = first.shared
    parts = [(getattr(m, "shared", None), getattr(m, "index", None)) for m in linears]
    return shared.outputs if parts == [(shared, i) for i in range(len(shared.sizes))] else None


def _version(x: torch.Tensor) -> int:
    """The tensor's in-place change counter; inference tensors (the engine's) keep none, and
    transformers' layers never change the projections' input in place between the calls."""
    return -1 if x.is_inference() else x._version


def _zeros(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.new_zeros(linear.out_features)


class PackedPart(nn.Module):
    """One of several sibling linears packed together (``_SharedInput``)."""

    def __init__(self, shared: _SharedInput, index: int, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.has_bias = linear.bias is not None
        self.shared = shared
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.index)

    def unpacked(self) -> nn.Linear:
        weight, bias = self.shared.dense(self.index)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.has_bias)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if self.has_bias and bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"oneDNN packed with its siblings (part {self.index})"
        )


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """float32 wherever oneDNN is built in; bfloat16 where the CPU computes it natively
    (AVX512-BF16 / AMX, the CPUs ``resolve_dtype`` picks bf16 on; elsewhere oneDNN would
    emulate it). There the packed bf16 product is bit-identical to ``F.linear``'s and 1.3-2.6x
    faster at decode's few rows (SmolVLM-256M's 576 -> 49,280 head: 2.36 against 6.12 ms at one
    row on an AVX512-BF16 EPYC, ``bench/probe_linear.py``)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return cpu_has_native_bf16() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def pack_language_model(model: Any, tied_head_max_bytes: int = 0) -> int:
    """Replace the decoder's linear layers and the output head by ``PackedLinear``; a head tied
    to the input embeddings only when its packed copy takes at most ``tied_head_max_bytes``.
    Returns how many layers were packed (0 when the model has no decoder to find)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(decoder, nn.Module):
        return 0
    count = _pack_siblings(decoder)
    count += _replace(decoder, lambda m: type(m) is nn.Linear, PackedLinear)
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    tied = embeddings is not None and head is not None and head.weight is embeddings.weight
    if type(head) is nn.Linear and (not tied or _nbytes(head.weight) <= tied_head_max_bytes):
        count += _replace(model, lambda m: m is head, PackedLinear)
    log.info("packed %d linear layers of the language model for oneDNN", count)
    return count


def unpack_language_model(model: nn.Module) -> int:
    """Undo ``pack_language_model`` (benchmarks compare the engine with stock transformers on
    the same model object). Returns how many layers were unpacked."""
    return _replace(
        model, lambda m: isinstance(m, PackedLinear | PackedPart), lambda m: m.unpacked()
    )


def _pack_siblings(decoder: nn.Module) -> int:
    """Pack every ``SHARED_INPUT`` set of plain linears of one module as one weight; returns
    how many linears that replaced. One set at a time, so at most one set's weights are held
    twice while it is packed."""
    count = 0
    # The parents only: a list of every module would hold each original linear until the end
    # (twice the layers' memory, as ``_replace`` says); a parent lets go of its own on setattr.
    parents = [
        m
        for m in decoder.modules()
        if any(type(getattr(m, names[0], None)) is nn.Linear for names in SHARED_INPUT)
    ]
    for module in parents:
        for names in SHARED_INPUT:
            linears = [getattr(module, name, None) for name in names]
            plain = [m for m in linears if type(m) is nn.Linear]
            if len(plain) < len(names) or len({(m.in_features, m.weight.dtype) for m in plain}) > 1:
                continue
            shared = _SharedInput(plain)
            for index, (name, linear) in enumerate(zip(names, plain, strict=True)):
                setattr(module, name, PackedPart(shared, index, linear))
            del linears, plain, linear
            count += len(names)
    return count


def _replace(
    root: nn.Module, match: Callable[[Any], bool], make: Callable[[Any], nn.Module]
) -> int:
    """Put ``make(child)`` in place of every child module under ``root`` that ``match``es, one
    at a time: only (parent, name) pairs are listed first, so each replaced child (and its
    weight) is freed before the next is made. A list of the modules themselves would keep every
    original alive until the end: twice the layers' memory (a 3B model's float32 linears ran a
    24 GiB machine out of memory)."""
    targets = [
        (parent, name)
        for parent in root.modules()
        for name, child in parent.named_children()
        if match(child)
    ]
    for parent, name in targets:
        setattr(parent, name, make(getattr(parent, name)))
    return len(targets)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
