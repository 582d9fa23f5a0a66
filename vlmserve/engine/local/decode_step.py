"""One decode step of a plain Llama- or Qwen-style language model, run straight through its
layers instead of through transformers' forward.

At decode a step multiplies one row per sequence by every weight: the arithmetic is small, and
transformers' module stack around it is not. Measured on SmolVLM-256M's 30-layer decoder on the
2-core CPU: with the layers narrowed to 64 wide (so the matrices cost nothing) a decode step
still takes 19.8 ms, against 41 ms for the real widths: half of every step is Python and op
dispatch (decorators, kwargs plumbing, mask building, the hub-kernel wrappers, six ops per
RMSNorm call). vLLM removes it with its own model code and a compiled graph; ``torch.compile``
cannot trace the engine's oneDNN-packed weights (opaque mkldnn tensors) and its groups change
shape every step. So for the decoder layers we know (``PLAIN_LAYERS``: pre-norm attention with
rotary positions, SiLU-gated MLP, every layer full attention, no embedding or logit scaling),
``DecodeStep`` calls the model's own modules (norms, projections, rotary embedding, head) in
the order the layer's ``forward`` does, with nothing around them. Positions go through the
model's own rotary module (M-RoPE included: a decode token's three axes share one position), so
rope scaling is whatever the checkpoint says. Anything else (Gemma 3's sandwich norms and
sliding windows, an unknown family) decodes through transformers as before. On SmolVLM-256M a
step takes 32 ms instead of 40 at one row and 51 instead of 59 at eight (the 64-wide copy:
12.9 ms instead of 19.8; what is left is mostly oneDNN's ~25 us per call and the SDPA kernel).

Prefill stays on transformers' forward: hundreds of rows per call make its overhead small, and
vision features enter there. Tests hold this path to transformers' logits for every family it
takes (tests/engine/local/test_decode_step.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional

from vlmserve.engine.local.packed_linear import stacked_call

log = logging.getLogger(__name__)

# Decoder layers whose forward is exactly: x += o_proj(attention(rope(q, k), v)) over
# input_layernorm(x); x += down_proj(silu(gate_proj(h)) * up_proj(h)) over
# post_attention_layernorm(x) (Qwen3's q_norm / k_norm on each head before rope included, and
# Ministral 3's query scale by position after it: ``_query_scale``).
PLAIN_LAYERS = frozenset(
    {
        "LlamaDecoderLayer",
        "Qwen2DecoderLayer",
        "Qwen2VLDecoderLayer",
        "Qwen2_5_VLDecoderLayer",
        "Qwen3DecoderLayer",
        "Qwen3VLTextDecoderLayer",
        "Ministral3DecoderLayer",
    }
)
# RMSNorms computing weight * x / sqrt(mean(x^2) + eps) in float32: one fused ``rms_norm``
# kernel (15 us) instead of six ops (28 us) when the model runs in float32 (same numbers).
RMS_NORMS = frozenset(
    {
        "LlamaRMSNorm",
        "Qwen2RMSNorm",
        "Qwen2VLRMSNorm",
        "Qwen2_5_VLRMSNorm",
        "Qwen3RMSNorm",
        "Qwen3VLTextRMSNorm",
        "Ministral3RMSNorm",
    }
)

Fn = Callable[[torch.Tensor], torch.Tensor]
Split = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's pieces, looked up once."""

    input_norm: Fn
    qkv: Split
    q_norm: Fn | None
    k_norm: Fn | None
    o_proj: Fn
    post_norm: Fn
    gate_up: Split
    act: Fn
    down: Fn
    head_dim: int
    scaling: float


class DecodeStep:
    """Logits of the next token of every row: ``step(input_ids, positions, pads, cache)``."""

    def __init__(self, model: Any, decoder: Any) -> None:
        # Any: transformers' modules, reached by attribute (nn.Module's __getattr__ types them
        # as Tensor | Module)
        self.embed: Any = model.get_input_embeddings()
        self.head: Any = model.get_output_embeddings()
        self.rotary: Any = decoder.rotary_emb
        self.norm = _norm(decoder.norm)
        self.layers = [_layer(layer) for layer in decoder.layers]
        self.query_scale = _query_scale(decoder.config)

    @classmethod
    def of(cls, model: Any) -> DecodeStep | None:
        """The direct step for ``model``, or None when its decoder is not one we know."""
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        reason = _unsupported(model, decoder)
        if reason:
            log.info("decode runs through transformers' forward: %s", reason)
            return None
        return cls(model, decoder)

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        keep: torch.Tensor | None,
        cache: Any,
    ) -> torch.Tensor:
        """``input_ids`` [rows, 1]; ``positions`` what ``Family.decode_positions`` gives;
        ``keep`` [rows, cached + 1] bool, False over each row's left padding (None: no
        padding). Rows stay 2-D [rows, hidden] (one token each): oneDNN takes them without a
        reshape."""
        x = self.embed(input_ids.view(-1))
        rows = x.shape[0]
        cos, sin = self.rotary(x.unsqueeze(1), positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [rows, heads, 1, head_dim]
        mask = None if keep is None else keep.view(rows, 1, 1, -1)
        scale = None if self.query_scale is None else self.query_scale(positions).to(x.dtype)
        for index, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.input_norm(x))
            q = q.view(rows, -1, 1, layer.head_dim)
            k = k.view(rows, -1, 1, layer.head_dim)
            v = v.view(rows, -1, 1, layer.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if scale is not None:
                q = q * scale
            k, v = cache.update(k, v, index)
            out = _attention(q, k, v, mask, layer.scaling)
            x = x + layer.o_proj(out.reshape(rows, -1))
            gate, up = layer.gate_up(layer.post_norm(x))
            x = x + layer.down(layer.act(gate) * up)
        return self.head(self.norm(x)).float()


def _layer(layer: Any) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    q_norm = getattr(attn, "q_norm", None)
    k_norm = getattr(attn, "k_norm", None)
    return _Layer(
        input_norm=_norm(layer.input_layernorm),
        qkv=_siblings(attn.q_proj, attn.k_proj, attn.v_proj),
        q_norm=_norm(q_norm) if q_norm is not None else None,
        k_norm=_norm(k_norm) if k_norm is not None else None,
        o_proj=attn.o_proj,
        post_norm=_norm(layer.post_attention_layernorm),
        gate_up=_siblings(mlp.gate_proj, mlp.up_proj),
        act=mlp.act_fn,
        down=mlp.down_proj,
        head_dim=int(attn.head_dim),
        scaling=float(attn.scaling),
    )


def _norm(module: Any) -> Fn:
    weight = getattr(module, "weight", None)
    if type(module).__name__ not in RMS_NORMS or weight is None or weight.dtype != torch.float32:
        return cast(Fn, module)
    shape, eps = (weight.shape[-1],), float(module.variance_epsilon)
    return lambda x: functional.rms_norm(x, shape, weight, eps)


def _query_scale(config: Any) -> Fn | None:
    """Llama 4's query scale by position, which Ministral 3's attention applies after rotary:
    1 + beta * log(1 + floor(position / original context)), exactly 1 inside the original
    context (16,384 positions on the releases); computed as the layer computes it, per row
    [rows, 1, 1, 1]. None for a decoder without it."""
    rope = getattr(config, "rope_parameters", None) or {}
    beta = rope.get("llama_4_scaling_beta")
    if beta is None:
        return None
    original = rope["original_max_position_embeddings"]
    return lambda positions: (1 + beta * torch.log(1 + torch.floor(positions / original))).view(
        -1, 1, 1, 1
    )


def _siblings(*linears: Any) -> Split:
    """The linears' outputs for one input: one call when they were packed together."""
    return stacked_call(*linears) or (lambda x: tuple(linear(x) for linear in linears))


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """One query per row against the cache. On the CPU a bfloat16 (or float16) step runs the
    attention in float32: PyTorch's CPU flash-attention kernel takes ~14 us per row and head
    in bf16 at a single query (933 us for 8 rows x 9 heads x 180 keys of SmolVLM-256M, 30 calls
    a step: half of an 8-row step), and 211 us with the upcast included. The inputs are exact in
    float32 and the kernel accumulates in float32 either way, so the error against a float32
    reference is the same (the cast back to bf16 dominates it); each row is still computed on
    its own, the same alone and in a batch."""
    dtype = q.dtype
    if q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        q, k, v = q.float(), k.float(), v.float()
    out = functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
    return out.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _unsupported(model: Any, found: Any) -> str:
    """Why ``model`` cannot take the direct step ("" when it can)."""
    if not isinstance(found, nn.Module):
        return "no decoder found"
    decoder: Any = found
    for name in ("layers", "norm", "rotary_emb"):
        if not hasattr(decoder, name):
            return f"its decoder has no {name}"
    kinds = {type(layer).__name__ for layer in decoder.layers}
    if not kinds <= PLAIN_LAYERS:
        return f"decoder layers {sorted(kinds - PLAIN_LAYERS)} are not plain pre-norm layers"
    text = model.config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None) or ["full_attention"]
    windowed = getattr(text, "sliding_window", None) is not None and getattr(
        text, "use_sliding_window", True
    )  # Mistral's layers slide whenever sliding_window is set; Qwen2's only with the switch
    if set(layer_types) != {"full_attention"} or windowed:
        return "it has sliding-window layers"
    if getattr(text, "final_logit_softcapping", None) or getattr(
        text, "attn_logit_softcapping", None
    ):
        return "it caps its logits"
    if model.get_output_embeddings() is None or model.get_input_embeddings() is None:
        return "no embeddings or head"
    activations = {type(layer.mlp.act_fn).__name__ for layer in decoder.layers}
    if not activations <= {"SiLU", "SiLUActivation"}:
        return f"its MLP activation is {sorted(activations)}"
    return ""
