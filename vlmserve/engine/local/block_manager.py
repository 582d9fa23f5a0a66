"""Where prefix KV lives: the KV of prompts' full 256-token blocks, keyed, pinned and evicted.

Keys chain (nano-vllm's idiom): a block's key hashes its parent's key, its token ids, and the
kind, identity and offset of every media item whose placeholder tokens it overlaps, so two prompts
share a block only if everything before and in it is equal, pictures included (placeholder ids
are the same for every image: hashing tokens alone reuses the wrong image's KV). The first key is
seeded with the model and the tenant, so tenants never share blocks. A hit is confirmed by
comparing the block's stored token ids.

Why a cached prefix is exact for both families: a token's KV depends on the tokens before it,
their media (identity fixes pixels, hence features and Qwen2-VL's grid) and their positions. For
idefics3 positions are plain indices; Qwen2-VL's M-RoPE positions of a token depend only on what
precedes it and on the grids of the items it lies in, all folded into the key. So a block may end
anywhere, even inside an image: the runner recomputes positions for the whole prompt and the
embedder slices the features of an image that straddles the cut (embedder.py).

Blocks live in an LRU ordered so that a parent is always more recent than its children (a chain is
touched from its last block back to its first): eviction takes the least recent block that no
running sequence holds, which is never a block whose children are still cached. Blocks a running
sequence reused or stored are pinned (reference counted) until it ends. A sequence never writes
into blocks: its KV is a concatenated copy, so eviction cannot corrupt it either way. Used by the
step thread only; ``stats`` may be read from anywhere.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmserve.engine.local.embedder import MediaSlot
from vlmserve.engine.local.kv_cache import keeps_every_position

BLOCK_TOKENS = 256


@dataclass(slots=True, eq=False)
class Block:
    key: bytes
    token_ids: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, 256, dim]
    num_bytes: int
    ref_count: int = 0


@dataclass(frozen=True, slots=True)
class BlockStats:
    num_requests: int
    num_hit_requests: int
    num_prompt_tokens: int
    num_cached_tokens: int
    num_blocks: int
    num_bytes: int
    max_bytes: int
    num_evictions: int


def salt(model: str, tenant: str) -> bytes:
    """The seed of a prompt's first block key: the model and the tenant."""
    return hashlib.blake2b(f"vlmserve-prefix\0{model}\0{tenant}".encode(), digest_size=32).digest()


def block_keys(
    token_ids: Sequence[int],
    slots: Sequence[MediaSlot],
    seed: bytes,
    block_tokens: int = BLOCK_TOKENS,
) -> list[bytes]:
    """The chained keys of every full block of the prompt."""
    keys, key = [], seed
    for lo in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        hi = lo + block_tokens
        h = hashlib.blake2b(key, digest_size=32)
        h.update(array("q", token_ids[lo:hi]).tobytes())
        for s in slots:
            if s.start < hi and s.end > lo:
                h.update(f"\0{s.kind}\0{s.identity}\0{s.start - lo}\0{s.end - s.start}".encode())
        key = h.digest()
        keys.append(key)
    return keys


class BlockManager:
    def __init__(self, max_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()  # least recently used first
        self._num_bytes = 0
        self._num_requests = self._num_hit_requests = self._num_evictions = 0
        self._num_prompt_tokens = self._num_cached_tokens = 0

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def match(self, keys: Sequence[bytes], token_ids: Sequence[int]) -> list[Block]:
        """The cached blocks of the longest prefix of ``keys``, pinned: ``release`` them."""
        hit = []
        for i, key in enumerate(keys):
            block = self._blocks.get(key)
            lo = i * self.block_tokens
            if block is None or block.token_ids != tuple(token_ids[lo : lo + self.block_tokens]):
                break
            hit.append(block)
        self._pin(hit)
        return hit

    def store(
        self, keys: Sequence[bytes], token_ids: Sequence[int], cache: Any, held: list[Block]
    ) -> list[Block]:
        """Keep the blocks of ``keys`` after ``held`` (the prompt's matched blocks), copied from
        ``cache`` (row 0 holds the prompt's KV from position 0). Returns the new blocks, pinned;
        stops early when the budget is all pinned."""
        chain, added = list(held), []
        for i in range(len(held), len(keys)):
            block = self._blocks.get(keys[i])
            if block is None:
                block = self._insert(keys[i], token_ids, cache, i)
                if block is None:
                    break
            block.ref_count += 1  # pinned at once: making room for the next must not evict it
            chain.append(block)
            added.append(block)
        self._touch(chain)
        return added

    def release(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            block.ref_count -= 1

    def record(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        """Count one prefill for the hit rates."""
        self._num_requests += 1
        self._num_hit_requests += num_cached_tokens > 0
        self._num_prompt_tokens += num_prompt_tokens
        self._num_cached_tokens += num_cached_tokens

    def stats(self) -> BlockStats:
        return BlockStats(
            num_requests=self._num_requests,
            num_hit_requests=self._num_hit_requests,
            num_prompt_tokens=self._num_prompt_tokens,
            num_cached_tokens=self._num_cached_tokens,
            num_blocks=len(self._blocks),
            num_bytes=self._num_bytes,
            max_bytes=self.max_bytes,
            num_evictions=self._num_evictions,
        )

    def _pin(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            block.ref_count += 1
        self._touch(blocks)

    def _touch(self, chain: Sequence[Block]) -> None:
        for block in reversed(chain):  # the first block ends up the most recent
            self._blocks.move_to_end(block.key)

    def _insert(self, key: bytes, token_ids: Sequence[int], cache: Any, index: int) -> Block | None:
        lo, hi = index * self.block_tokens, (index + 1) * self.block_tokens
        num_bytes = sum(2 * _nbytes(layer.keys[:1, :, lo:hi]) for layer in cache.layers)
        if not self._make_room(num_bytes):
            return None
        kv = [
            (layer.keys[:1, :, lo:hi].clone(), layer.values[:1, :, lo:hi].clone())
            for layer in cache.layers
        ]
        block = Block(key, tuple(token_ids[lo:hi]), kv, num_bytes)
        self._blocks[key] = block
        self._num_bytes += num_bytes
        return block

    def _make_room(self, num_bytes: int) -> bool:
        if num_bytes > self.max_bytes:
            return False
        while self._num_bytes + num_bytes > self.max_bytes:
            victim = next((b for b in self._blocks.values() if b.ref_count == 0), None)
            if victim is None:
                return False
            del self._blocks[victim.key]
            self._num_bytes -= victim.num_bytes
            self._num_evictions += 1
        return True


def supports(cache: Any) -> bool:
    """Whether ``cache`` (a fresh DynamicCache) is one the blocks can fill: full-attention layers
    that keep every position (a sliding-window layer forgets the start of long prompts)."""
    return all(keeps_every_position(layer) for layer in cache.layers)


def fill(cache: Any, blocks: Sequence[Block]) -> None:
    """Load the concatenated KV of ``blocks`` into the empty ``cache``."""
    for i, layer in enumerate(cache.layers):
        keys = torch.cat([b.kv[i][0] for b in blocks], dim=-2)
        values = torch.cat([b.kv[i][1] for b in blocks], dim=-2)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
