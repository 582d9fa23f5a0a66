"""The automatic prompt cache, as the model runner uses it: ``plan`` a prefill that starts after
the longest cached block-aligned prefix, ``embed`` its tail (encoded media from the encoder cache
or encoded ahead in units), run it, ``commit`` the prompt's new blocks, ``keep_answer`` and
``release`` when the sequence ends.

Step semantics (reference/step-api.md 8.3): automatic (no request flag), prompts over 256 tokens,
256-token units; ``usage.cached_tokens`` is the number of prompt tokens whose KV came from the
cache: a multiple of 256, 0 on a miss, counted inside ``prompt_tokens``. At least one prompt token
is always computed (its logits give the first answer token), so a prompt of exactly k blocks
reuses at most k - 1. ``count_tokens`` reports ``cached_tokens=0``: it measures the prompt, and
whether it would hit depends on what runs before it.

Blocks come from prompts (after their prefill) and from answers: when a single-choice answer ends
normally, the blocks it completed (prompt + answer tokens) are kept too, so the next turn, which
resends the answer as history, reuses them when its template renders the same token ids.

Pieces: block_manager.py (keys, blocks, LRU, pinning), encoder_cache.py (vision features by
media identity), embedder.py (prompt embeddings from both, for any tail of the prompt). A prompt
whose media layout cannot be proven (embedder.py) is prefilled whole, the model's own way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from vlmserve.engine.local.block_manager import (
    Block,
    BlockManager,
    block_keys,
    fill,
    salt,
    supports,
)
from vlmserve.engine.local.embedder import Embedder, MediaSlot, embedder_for
from vlmserve.engine.local.encoder_cache import EncoderCache
from vlmserve.engine.local.families import Family
from vlmserve.engine.local.kv_cache import new_cache
from vlmserve.engine.local.sequence import Sequence
from vlmserve.engine.types import PromptCacheStats
from vlmserve.settings import EngineSettings

log = logging.getLogger("vlmserve.engine")


@dataclass(slots=True)
class Prefill:
    start: int  # prompt tokens whose KV ``cache`` already holds (a multiple of the block size)
    cache: Any  # a DynamicCache, the sequence's own
    keys: list[bytes]  # of every full block of the prompt
    blocks: list[Block]  # the matched ones
    slots: tuple[MediaSlot, ...]  # the prompt's media
    inputs_embeds: torch.Tensor | None = None  # prompt tokens [start:], once ``embed`` ran
    num_encoded: int = 0  # media items the vision tower ran for
    num_encoder_hits: int = 0  # media items whose features came from the encoder cache


class PrefixCache:
    def __init__(
        self,
        model: Any,
        family: Family,
        processor: Any,
        settings: EngineSettings,
        model_name: str,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.block_tokens: int = settings.prefix_block_tokens
        self.encoder_cache = EncoderCache(settings.encoder_cache_bytes)
        self.embedder: Embedder | None = embedder_for(family, model, processor, self.encoder_cache)
        self.blocks = BlockManager(settings.prefix_cache_bytes, self.block_tokens)
        self.reuses_kv = supports(self.new_cache())
        self._pins: dict[int, list[Block]] = {}  # seq_id → blocks it holds, in key order
        self._slots: dict[int, tuple[MediaSlot, ...]] = {}  # seq_id → its prompt's media

    def new_cache(self) -> Any:
        return new_cache(self.model.config)

    def plan(
        self, seq: Sequence, inputs: dict[str, torch.Tensor], *, record: bool = True
    ) -> Prefill | None:
        """How to prefill ``seq`` (``inputs`` on the device), or None: the model's own way.
        ``record``: count it in the hit rates (not when a preempted sequence is recomputed)."""
        token_ids = seq.prompt.token_ids
        slots = self.embedder.layout(inputs, seq.prompt.media_identities) if self.embedder else None
        if slots is None:
            if record:
                self.blocks.record(len(token_ids), 0)
            return None
        keys: list[bytes] = []
        if self.reuses_kv:
            keys = block_keys(
                token_ids, slots, salt(self.model_name, seq.tenant), self.block_tokens
            )
        reusable = keys[: (len(token_ids) - 1) // self.block_tokens]
        blocks = self.blocks.match(reusable, token_ids)
        self._pins.setdefault(seq.seq_id, []).extend(blocks)
        self._slots[seq.seq_id] = slots
        start = len(blocks) * self.block_tokens
        cache = self.new_cache()
        if blocks:
            fill(cache, blocks)
        if record:
            self.blocks.record(len(token_ids), start)
        return Prefill(start, cache, keys, blocks, slots)

    def embed(
        self,
        plan: Prefill,
        inputs: dict[str, torch.Tensor],
        encoded: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The prompt's ``inputs_embeds`` from ``plan.start`` on; ``encoded``: vision features
        encoded ahead in units (``embedder.encode_unit``), by identity."""
        assert self.embedder is not None
        embeds, plan.num_encoded, plan.num_encoder_hits = self.embedder.embed(
            inputs, plan.slots, plan.start, encoded
        )
        plan.inputs_embeds = embeds
        return embeds

    def commit(self, seq: Sequence, plan: Prefill) -> None:
        """Keep the prompt's blocks; ``plan.cache`` holds exactly the prompt's KV (one row)."""
        added = self.blocks.store(plan.keys, seq.prompt.token_ids, plan.cache, plan.blocks)
        self._pins.setdefault(seq.seq_id, []).extend(added)
        log.info(
            "prompt cache: request %s: %d prompt tokens, %d cached (%d of %d blocks), "
            "%d blocks stored; media: %d encoded, %d from the encoder cache; "
            "kv %.1f MiB in %d blocks",
            seq.request_id,
            seq.prompt.num_tokens,
            plan.start,
            len(plan.blocks),
            len(plan.keys),
            len(added),
            plan.num_encoded,
            plan.num_encoder_hits,
            self.blocks.num_bytes / 2**20,
            self.blocks.num_blocks,
        )

    def keep_answer(self, seq: Sequence, cache: Any) -> None:
        """Keep the blocks that the answer completed: a next turn that resends the answer as
        history reuses them when its template renders the same token ids (keys compare ids)."""
        slots = self._slots.get(seq.seq_id)
        if slots is None or not self.reuses_kv:
            return
        token_ids = (*seq.prompt.token_ids, *seq.choices[0].output_ids[:-1])  # last: not fed
        if cache.get_seq_length() != len(token_ids):
            return
        keys = block_keys(token_ids, slots, salt(self.model_name, seq.tenant), self.block_tokens)
        held = self._pins.setdefault(seq.seq_id, [])
        if len(keys) > len(held):
            held.extend(self.blocks.store(keys, token_ids, cache, list(held)))

    def release(self, seq_id: int) -> None:
        self._slots.pop(seq_id, None)
        self.blocks.release(self._pins.pop(seq_id, []))

    def stats(self) -> PromptCacheStats:
        kv, enc = self.blocks.stats(), self.encoder_cache.stats()
        return PromptCacheStats(
            num_requests=kv.num_requests,
            num_hit_requests=kv.num_hit_requests,
            num_prompt_tokens=kv.num_prompt_tokens,
            num_cached_tokens=kv.num_cached_tokens,
            num_blocks=kv.num_blocks,
            kv_bytes=kv.num_bytes,
            kv_max_bytes=kv.max_bytes,
            num_evicted_blocks=kv.num_evictions,
            num_encoder_hits=enc.num_hits,
            num_encoder_misses=enc.num_misses,
            encoder_bytes=enc.num_bytes,
            encoder_max_bytes=enc.max_bytes,
            num_evicted_encodings=enc.num_evictions,
        )
