"""The vision-encoder cache: a media item's features (what the vision tower and connector make of
it, one row per placeholder token), keyed by its identity, LRU within a byte budget.

The identity is the hash of the pixels the processor saw (media sized them first), so it also
stands for the sizing: equal identities give equal features, and an image already encoded skips
the vision tower even when the text around it changed. Used by the step thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class EncoderCacheStats:
    num_hits: int
    num_misses: int
    num_bytes: int
    max_bytes: int
    num_items: int
    num_evictions: int


class EncoderCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._num_bytes = 0
        self._num_hits = 0
        self._num_misses = 0
        self._num_evictions = 0

    def get(self, kind: str, identity: str) -> torch.Tensor | None:
        key = (kind, identity)
        features = self._items.get(key)
        if features is None:
            self._num_misses += 1
            return None
        self._items.move_to_end(key)
        self._num_hits += 1
        return features

    def peek(self, kind: str, identity: str) -> torch.Tensor | None:
        """Like ``get`` but neither counted nor refreshed (planning, not using)."""
        return self._items.get((kind, identity))

    def count_miss(self) -> None:
        """An item encoded without ``get`` (ahead of its prefill, in units)."""
        self._num_misses += 1

    def put(self, kind: str, identity: str, features: torch.Tensor) -> None:
        """Keep ``features`` (not copied: nobody modifies them) unless over the whole budget."""
        key = (kind, identity)
        size = _num_bytes(features)
        if key in self._items or size > self.max_bytes:
            return
        while self._num_bytes + size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._num_bytes -= _num_bytes(old)
            self._num_evictions += 1
        self._items[key] = features
        self._num_bytes += size

    def stats(self) -> EncoderCacheStats:
        return EncoderCacheStats(
            num_hits=self._num_hits,
            num_misses=self._num_misses,
            num_bytes=self._num_bytes,
            max_bytes=self.max_bytes,
            num_items=len(self._items),
            num_evictions=self._num_evictions,
        )


def _num_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
