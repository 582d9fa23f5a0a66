"""The KV cache the engine decodes into: transformers' ``DynamicCache`` whose full-attention
layers append in place instead of concatenating.

``DynamicLayer.update`` builds a new tensor of every key and value at every step
(``torch.cat([cache, new])``): a copy of the whole cache per layer per token. On SmolVLM-256M at
a 150-token context that is 60 copies and ~2 ms of a 42 ms decode step; at a 1,200-token picture
prompt, 80 MB copied per step. vLLM and SGLang write each token into preallocated blocks;
``StaticCache`` does too but fixes the length up front, which the engine's groups (rows joining
with other lengths, padding cut) cannot. ``GrowingLayer`` keeps the dynamic layer's behaviour,
with room for ``ROOM`` more tokens behind the keys and values: an update writes into the room
and returns a view; only when the room is used up is the cache copied, into a tensor with room
again (one copy per ``ROOM`` tokens instead of one per token). The KV budget counts used tokens;
the room adds at most ``ROOM`` tokens per row on top.

Whatever the engine assigns to ``keys``/``values`` (a joined group, a row's view of a shared
prefill, cached prefix blocks) is taken as it is, without room, so a tensor the layer did not
allocate itself is never written into: its first update copies it out.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Tokens of room allocated behind the cache: 64 tokens of a SmolVLM-256M row are 2.9 MB over all
# layers; per-step copies then happen once every 64 steps.
ROOM = 64


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends in place into room it allocated (see the module)."""

    def __init__(self) -> None:
        self._key_store: torch.Tensor | None = None
        self._value_store: torch.Tensor | None = None
        self._length: int | None = None  # tokens used in the stores; None: all of them, no room
        super().__init__()

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return _used(self._key_store, self._length)

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._value_store = self.values  # the values' used part: no room left to read
        self._key_store, self._length = value, None

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return _used(self._value_store, self._length)

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._key_store = self.keys
        self._value_store, self._length = value, None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        used = keys.shape[-2] if keys.dim() == 4 else 0
        total = used + key_states.shape[-2]
        key_store, value_store = self._key_store, self._value_store
        if (
            self._length is None
            or key_store is None
            or value_store is None
            or not _has_room(key_store, key_states, total)
        ):
            key_store = _with_room(keys, key_states, used, total)
            value_store = _with_room(values, value_states, used, total)
        key_store[:, :, used:total] = key_states
        value_store[:, :, used:total] = value_states
        self._key_store, self._value_store, self._length = key_store, value_store, total
        return key_store[:, :, :total], value_store[:, :, :total]


def new_cache(config: Any) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers are ``GrowingLayer``s
    (sliding-window layers forget the start and stay as transformers makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [
        GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache


def keeps_every_position(layer: Any) -> bool:
    """Whether ``layer`` is a full-attention layer (not a sliding window)."""
    return type(layer) in (DynamicLayer, GrowingLayer)


def _used(store: torch.Tensor | None, length: int | None) -> torch.Tensor | None:
    if store is None or length is None:
        return store
    return store[:, :, :length]


def _has_room(store: torch.Tensor, new: torch.Tensor, total: int) -> bool:
    return store.dim() == 4 and store.shape[-2] >= total and store.shape[:2] == new.shape[:2]


def _with_room(old: torch.Tensor, new: torch.Tensor, used: int, total: int) -> torch.Tensor:
    batch, heads, _, dim = new.shape
    store = new.new_empty(batch, heads, total + ROOM, dim)
    if used:
        store[:, :, :used] = old
    return store
