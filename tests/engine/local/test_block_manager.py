"""Block keys and the block store: image-aware chained keys, LRU order, pinning."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from vlmserve.engine.local.block_manager import BlockManager, block_keys, fill, salt
from vlmserve.engine.local.embedder import MediaSlot

B = 4  # block size for the unit tests
SEED = salt("model", "")


def slot(identity: str, start: int, length: int = 3) -> MediaSlot:
    return MediaSlot("image", identity, 0, start, start + length, length)


def kv_cache(num_tokens: int, fill_value: float = 0.0) -> Any:
    """A DynamicCache look-alike: one layer, position p holds the value p (+ fill_value)."""
    keys = torch.arange(num_tokens, dtype=torch.float32).view(1, 1, num_tokens, 1) + fill_value
    return SimpleNamespace(layers=[SimpleNamespace(keys=keys, values=-keys)])


def test_hash_collision_same_tokens_different_image() -> None:
    tokens = list(range(12))
    cat = block_keys(tokens, [slot("cat", 1)], SEED, B)
    pizza = block_keys(tokens, [slot("pizza", 1)], SEED, B)
    assert all(a != b for a, b in zip(cat, pizza, strict=True))
    assert block_keys(tokens, [slot("cat", 1)], SEED, B) == cat


def test_hash_collision_same_image_at_another_offset() -> None:
    tokens = [7] * 12
    assert block_keys(tokens, [slot("cat", 1)], SEED, B) != block_keys(
        tokens, [slot("cat", 2)], SEED, B
    )


def test_hash_collision_tenants() -> None:
    tokens = list(range(8))
    assert block_keys(tokens, [], salt("model", "a"), B) != block_keys(
        tokens, [], salt("model", "b"), B
    )
    assert block_keys(tokens, [], salt("m1", ""), B) != block_keys(tokens, [], salt("m2", ""), B)


def test_image_straddling_a_boundary_is_in_both_blocks_keys() -> None:
    tokens = list(range(12))
    cat, pizza = (
        block_keys(tokens, [slot("cat", 3)], SEED, B),
        block_keys(tokens, [slot("pizza", 3)], SEED, B),
    )
    assert cat[0] != pizza[0] and cat[1] != pizza[1]


def test_appended_image_leaves_earlier_block_keys_alone() -> None:
    tokens = list(range(16))
    one = block_keys(tokens, [slot("cat", 1)], SEED, B)
    two = block_keys(tokens, [slot("cat", 1), slot("pizza", 9)], SEED, B)
    assert one[:2] == two[:2] and one[2:] != two[2:]


def test_keys_chain_so_an_early_change_changes_every_later_key() -> None:
    tokens = list(range(12))
    changed = [99, *tokens[1:]]
    assert all(
        a != b
        for a, b in zip(
            block_keys(tokens, [], SEED, B), block_keys(changed, [], SEED, B), strict=True
        )
    )


def test_only_full_blocks_get_keys() -> None:
    assert len(block_keys(list(range(11)), [], SEED, B)) == 2


def test_match_returns_the_stored_kv_of_the_longest_prefix() -> None:
    manager = BlockManager(10_000, B)
    tokens = list(range(12))
    keys = block_keys(tokens, [], SEED, B)
    manager.release(manager.store(keys[:2], tokens, kv_cache(12), []))
    hit = manager.match(keys, tokens)
    assert len(hit) == 2
    target = kv_cache(0)
    target.layers[0].lazy_initialization = lambda k, v: None
    fill(target, hit)
    assert target.layers[0].keys.view(-1).tolist() == list(range(8))


def test_hit_is_confirmed_by_the_stored_token_ids() -> None:
    manager = BlockManager(10_000, B)
    tokens = list(range(8))
    keys = block_keys(tokens, [], SEED, B)
    manager.store(keys, tokens, kv_cache(8), [])
    assert manager.match(keys, [0, 1, 2, 3, 9, 9, 9, 9]) != []  # block 0 still equal
    assert len(manager.match(keys, [5, 1, 2, 3, 4, 5, 6, 7])) == 0


def _block_bytes() -> int:
    return 2 * B * 4  # keys and values, 4 float32 positions each


def test_eviction_never_takes_a_pinned_block() -> None:
    manager = BlockManager(2 * _block_bytes(), B)
    a, b = list(range(8)), list(range(100, 108))
    keys_a, keys_b = block_keys(a, [], SEED, B), block_keys(b, [], SEED, B)
    held = manager.store(keys_a, a, kv_cache(8), [])  # pinned: a running sequence uses them
    assert manager.store(keys_b, b, kv_cache(8), []) == []  # no room, nothing evicted
    reused = manager.match(keys_a, a)  # ... and another one reuses them
    assert len(reused) == 2
    manager.release(held)
    assert manager.store(keys_b, b, kv_cache(8), []) == []  # still pinned by the second
    manager.release(reused)
    assert len(manager.store(keys_b, b, kv_cache(8), [])) == 2
    assert manager.stats().num_evictions == 2 and manager.num_bytes == 2 * _block_bytes()


def test_lru_evicts_a_chains_last_block_before_its_first() -> None:
    manager = BlockManager(3 * _block_bytes(), B)
    a, b = list(range(8)), list(range(100, 104))
    keys_a = block_keys(a, [], SEED, B)
    manager.release(manager.store(keys_a, a, kv_cache(8), []))
    manager.release(manager.store(block_keys(b, [], SEED, B), b, kv_cache(4), []))
    c = list(range(200, 204))
    manager.release(manager.store(block_keys(c, [], SEED, B), c, kv_cache(4), []))
    hit = manager.match(keys_a, a)
    assert len(hit) == 1  # a's second block went first; its first block still hits


def test_a_block_stored_by_the_same_prompt_is_not_evicted_for_the_next() -> None:
    manager = BlockManager(2 * _block_bytes(), B)
    old = list(range(50, 58))
    manager.release(manager.store(block_keys(old, [], SEED, B), old, kv_cache(8), []))
    tokens = list(range(12))
    added = manager.store(block_keys(tokens, [], SEED, B), tokens, kv_cache(12), [])
    assert len(added) == 2 and all(block.ref_count == 1 for block in added)
