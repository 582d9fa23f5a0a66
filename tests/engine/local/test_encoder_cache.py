"""The vision-encoder cache: features by media identity, LRU within a byte budget."""

from __future__ import annotations

import torch

from vlmserve.engine.local.encoder_cache import EncoderCache


def features(rows: int) -> torch.Tensor:
    return torch.zeros(rows, 4)  # 16 bytes a row


def test_hit_returns_the_features_stored_for_that_identity_and_kind() -> None:
    cache = EncoderCache(1024)
    cat = features(2)
    cache.put("image", "cat", cat)
    assert cache.get("image", "cat") is cat
    assert cache.get("video", "cat") is None and cache.get("image", "pizza") is None
    stats = cache.stats()
    assert (stats.num_hits, stats.num_misses, stats.num_bytes) == (1, 2, 32)


def test_least_recently_used_features_are_evicted_first() -> None:
    cache = EncoderCache(3 * 32)
    for name in ("a", "b", "c"):
        cache.put("image", name, features(2))
    assert cache.get("image", "a") is not None  # b is now the oldest
    cache.put("image", "d", features(2))
    assert cache.get("image", "b") is None
    assert all(cache.get("image", name) is not None for name in ("a", "c", "d"))
    assert cache.stats().num_evictions == 1 and cache.stats().num_bytes <= 3 * 32


def test_features_larger_than_the_budget_are_not_kept() -> None:
    cache = EncoderCache(32)
    cache.put("image", "small", features(2))
    cache.put("image", "huge", features(100))
    assert cache.get("image", "huge") is None and cache.get("image", "small") is not None


def test_zero_budget_keeps_nothing() -> None:
    cache = EncoderCache(0)
    cache.put("image", "a", features(1))
    assert cache.get("image", "a") is None and cache.stats().num_items == 0
