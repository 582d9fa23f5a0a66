"""Owns the model and every tensor: chunked prefill, one batched decode forward per step,
sampling, and the KV of every running sequence. Makes no scheduling decisions.

Prefill fills each sequence's own ``DynamicCache``, in chunks of at most the token budget the
scheduler hands out when the prompt's embeddings are known (the prompt-cache path:
``inputs_embeds`` built by prefix_cache.py, cached vision features and prefix KV included);
otherwise the prompt goes in one forward, the model's own way. On the embeddings path the media
the prompt still needs are encoded first, one unit per step (an image, or one tile for tiling
families: embedder.py); a unit, like a whole-prompt forward's vision tower, pauses between two
of the tower's layers once it has run ``vision_slice_s`` while rows decode (vision_slices.py),
so a big picture never holds the decode rows for more than about one slice.
Fresh prompts of similar length that arrive together and fit the step's budget whole are
prefilled in one left-padded forward (one GEMM over all their tokens instead of a small one per
prompt); each row's KV then goes on as that sequence's cache. A finished prefill's cache is
repeated once per choice (``n`` choices cost one prefill) and *joins* a decode group.

A decode group is one ``DynamicCache`` holding the rows of many sequences, left-padded to a
common length, decoded in one forward with a 2-D attention mask (zeros over each row's padding)
and explicit per-row positions (``Family.decode_positions``: one text position per row, rope
delta included), so any family whose positions follow that contract batches without extra work.
For plain Llama/Qwen decoders the step runs straight through the layers (decode_step.py); the
caches' full-attention layers append in place (kv_cache.py).
Rows of one sequence are adjacent, so sampling, penalties and logits processors (grammar masks)
run per sequence on its slice of the logits with its own seeded generator: a request samples the
same tokens whatever its neighbours. Rows leave with ``batch_select_indices``; padding columns
that every row has are then cut off. Caches with layers other than full-attention
``DynamicLayer`` (sliding windows forget, so their lengths cannot be aligned by padding) get a
group of their own: such a family still runs, one forward per sequence.

Preemption frees a sequence's rows; when it runs again its prompt is prefilled again (cheap when
the prompt cache has it) and its choices' generated tokens are fed back in one forward, so
generation resumes exactly where it stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import torch

from vlmserve.engine.local.block_manager import supports
from vlmserve.engine.local.decode_step import DecodeStep
from vlmserve.engine.local.embedder import MediaSlot
from vlmserve.engine.local.kv_cache import new_cache
from vlmserve.engine.local.loader import LoadedModel, physical_memory
from vlmserve.engine.local.prefix_cache import Prefill, PrefixCache
from vlmserve.engine.local.sampler import apply_penalties, make_generator, sample
from vlmserve.engine.local.sequence import Sequence
from vlmserve.engine.local.vision_slices import SlicedCall, install_pauses
from vlmserve.engine.types import FinishReason, PromptCacheStats

log = logging.getLogger("vlmserve.engine")
T = TypeVar("T")
Prefilled = tuple[int, dict[int, int] | None]  # tokens computed; the first tokens once done
# Prompts prefilled in one padded forward may compute at most this much more than their tokens:
# one GEMM over every row beats a forward per prompt while padding wastes little.
PAD_SLACK = 1.25


@dataclass(slots=True, eq=False)
class _Prompt:
    """A prefill in progress."""

    inputs: dict[str, torch.Tensor]  # on the device
    positions: torch.Tensor  # of the whole prompt
    cache: Any
    start: int  # prompt tokens the cache holds
    plan: Prefill | None  # None: the prompt goes in one forward, the model's own way
    units: list[tuple[MediaSlot, int]] = field(default_factory=list)  # vision units to encode
    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # their features so far
    paused: SlicedCall | None = None  # a vision unit or a whole-prompt forward, part done


@dataclass(slots=True, eq=False)
class _State:
    seq: Sequence
    rows: list[int]  # choice index of each of its rows
    rope_delta: int
    generator: torch.Generator
    position: int = 0  # text position of the next token to feed
    counts: torch.Tensor | None = None  # rows x vocab generated-token counts, only with penalties
    last_tokens: torch.Tensor | None = None  # rows
    prompt: _Prompt | None = None  # while prefilling
    group: _Group | None = None  # once decoding


@dataclass(slots=True, eq=False)
class _Group:
    """Rows decoded together in one forward: one left-padded cache."""

    shared: bool  # the group every batchable sequence joins
    cache: Any = None
    states: list[_State] = field(default_factory=list)  # in row order
    pads: list[int] = field(default_factory=list)  # leading padding of each row

    @property
    def num_rows(self) -> int:
        return len(self.pads)

    @property
    def length(self) -> int:
        return int(self.cache.get_seq_length()) if self.cache is not None else 0


class ModelRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        prefix_cache: PrefixCache | None = None,
        *,
        direct_decode: bool = True,
        vision_slice_s: float = 0.0,
    ) -> None:
        self.model = loaded.model
        self.family = loaded.family
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.eos_token_ids = loaded.eos_token_ids
        self.cache_kwarg = loaded.cache_kwarg
        self.num_tokens = len(loaded.tokenizer)  # logits past the tokenizer are never sampled
        self.prefix_cache = prefix_cache
        self.batchable = supports(self._new_cache())
        self._direct = DecodeStep.of(self.model) if direct_decode else None
        # Vision encodings pause every ~vision_slice_s for a decode step (vision_slices.py).
        self.vision_slice_s = vision_slice_s if vision_slice_s > 0 else math.inf
        if vision_slice_s > 0:
            install_pauses(self.model)
        self.kv_bytes_per_token = _kv_bytes_per_token(self.model.config, self.dtype)
        self._states: dict[int, _State] = {}
        # seq_id → the generator of a preempted sequence: resumed sampling continues its draws
        self._parked: dict[int, torch.Generator] = {}
        self._shared = _Group(shared=True)
        self._groups: list[_Group] = [self._shared]

    # -- prefill -------------------------------------------------------------------------------

    def prefill_many(
        self, items: list[tuple[Sequence, int]]
    ) -> Iterator[tuple[Sequence, Prefilled | Exception]]:
        """Prefill every (sequence, token budget) of a step, yielding each sequence's outcome
        (``prefill``'s, or the error that failed it) as soon as it is known. Fresh prompts that
        fit their budget whole and have their embeddings ready share left-padded forwards, rows
        of similar length only (``similar_lengths``); the rest go one by one."""
        together: list[tuple[Sequence, int]] = []
        alone: list[tuple[Sequence, int]] = []
        later: list[tuple[Sequence, int]] = []  # planned once the prompts before them are in
        heads: set[tuple[int, ...]] = set()
        for seq, budget in items:
            if self._may_reuse_a_neighbour(seq, heads):
                later.append((seq, budget))
                continue
            try:
                ready = self._ready_whole(seq, budget)
            except Exception as exc:
                yield seq, exc
                continue
            (together if ready else alone).append((seq, budget))
        for group in similar_lengths(together, lambda item: item[0].prompt.num_tokens):
            if len(group) > 1:
                yield from self._prefill_together([seq for seq, _ in group])
            else:
                alone += group
        for seq, budget in alone + later:
            yield seq, self._prefill_or_error(seq, budget)

    def _prefill_or_error(self, seq: Sequence, budget: int) -> Prefilled | Exception:
        """``prefill``'s outcome, or the error that failed it (it fails ``seq`` only)."""
        try:
            return self.prefill(seq, budget)
        except Exception as exc:
            return exc

    @torch.inference_mode()
    def prefill(self, seq: Sequence, budget: int) -> Prefilled:
        """Compute up to ``budget`` more prompt tokens of ``seq`` (all of them when the prompt
        cannot be split). Returns (tokens computed, choice index → first token once the prompt
        is done, else None). A sequence that was preempted resumes without a new first token:
        it returns an empty dict when it joins the decode rows again."""
        state = self._states.get(seq.seq_id) or self._begin(seq)
        prompt = state.prompt
        assert prompt is not None
        if prompt.units:  # one vision-encoding unit (or a slice of it) per step
            self._encode_unit(prompt)
            return 0, None
        total = seq.prompt.num_tokens
        plan = prompt.plan
        if plan is None:
            whole = self._advance(
                prompt, partial(self._forward, prompt.inputs, prompt.positions, prompt.cache)
            )
            if whole is None:  # paused inside the vision tower
                return 0, None
            logits = whole.result
            computed = total
        else:
            embeds = self._embeds(prompt)
            end = total if budget >= total - prompt.start else prompt.start + max(1, budget)
            lo, hi = prompt.start - plan.start, end - plan.start
            chunk = (
                {"inputs_embeds": embeds[:, lo:hi]},
                prompt.positions[..., prompt.start : end],
                prompt.cache,
            )
            computed = end - prompt.start
            if end < total:  # a chunk before the prompt's last: its KV only, nothing to sample
                self._fill(*chunk)
                prompt.start = seq.num_computed_tokens = end
                return computed, None
            logits = self._forward(*chunk)
        prompt.start += computed
        seq.num_computed_tokens = prompt.start
        if prompt.start < total:
            return computed, None
        return computed, self._complete(state, logits)

    def _may_reuse_a_neighbour(self, seq: Sequence, heads: set[tuple[int, ...]]) -> bool:
        """Whether ``seq``, not begun yet, starts with the same first prompt-cache block as a
        prompt before it in this step (``heads``: theirs, begun or not). It is then planned
        after they ran, so that it reuses the blocks they store, as it did when each prompt
        was planned just before its own prefill, instead of computing them beside them."""
        if self.prefix_cache is None:
            return False
        size = self.prefix_cache.block_tokens
        if seq.prompt.num_tokens <= size:  # no full block to share
            return False
        head = tuple(seq.prompt.token_ids[:size])
        if head in heads and seq.seq_id not in self._states:
            return True
        heads.add(head)
        return False

    @torch.inference_mode()
    def _ready_whole(self, seq: Sequence, budget: int) -> bool:
        """Whether ``seq``'s whole prompt can go in a padded forward with others now: fresh (no
        cached prefix, not resumed after a preemption), within ``budget``, media encoded."""
        state = self._states.get(seq.seq_id) or self._begin(seq)
        prompt = state.prompt
        return (
            self.batchable
            and prompt is not None
            and prompt.plan is not None
            and prompt.plan.start == prompt.start == 0
            and not prompt.units
            and seq.num_preemptions == 0
            and budget >= seq.prompt.num_tokens
        )

    @torch.inference_mode()
    def _prefill_together(
        self, seqs: list[Sequence]
    ) -> list[tuple[Sequence, Prefilled | Exception]]:
        """One left-padded forward for the whole prompts of ``seqs`` (each ``_ready_whole``);
        each row's KV then continues as the sequence's own cache. Should the shared forward
        fail, each prompt runs alone, so a failure stays with the request that caused it."""
        outcomes: list[tuple[Sequence, Prefilled | Exception]] = []
        rows: list[tuple[_State, torch.Tensor]] = []
        for seq in seqs:
            state = self._states[seq.seq_id]
            assert state.prompt is not None
            try:
                rows.append((state, self._embeds(state.prompt)))
            except Exception as exc:
                outcomes.append((seq, exc))
        if not rows:
            return outcomes
        width = max(embeds.shape[1] for _, embeds in rows)
        pads = [width - embeds.shape[1] for _, embeds in rows]
        try:
            logits, cache = self._forward_padded(rows, pads)
        except Exception:
            log.exception("a batched prefill failed; its prompts run one by one")
            outcomes += [(state.seq, self._prefill_or_error(state.seq, width)) for state, _ in rows]
            return outcomes
        for i, (state, _) in enumerate(rows):
            prompt, total = state.prompt, state.seq.prompt.num_tokens
            assert prompt is not None and prompt.plan is not None
            try:
                prompt.cache = prompt.plan.cache = _cache_row(self._new_cache(), cache, i, pads[i])
                prompt.start = state.seq.num_computed_tokens = total
                outcomes.append((state.seq, (total, self._complete(state, logits[i : i + 1]))))
            except Exception as exc:
                outcomes.append((state.seq, exc))
        return outcomes

    def _forward_padded(
        self, rows: list[tuple[_State, torch.Tensor]], pads: list[int]
    ) -> tuple[torch.Tensor, Any]:
        """Last-token logits of every row and a cache of all rows, each left-padded by its pad."""
        embeds, positions = [], []
        for (state, row), pad in zip(rows, pads, strict=True):
            assert state.prompt is not None
            embeds.append(torch.nn.functional.pad(row, (0, 0, pad, 0)))
            positions.append(torch.nn.functional.pad(state.prompt.positions, (pad, 0)))
        width = embeds[0].shape[1]
        columns = torch.arange(width, device=self.device).unsqueeze(0)
        mask = (columns >= torch.tensor(pads, device=self.device).unsqueeze(1)).long()
        cache = self._new_cache()
        inputs = {"inputs_embeds": torch.cat(embeds), "attention_mask": mask}
        logits = self._forward(inputs, torch.cat(positions, dim=-2), cache)
        return logits, cache

    def _embeds(self, prompt: _Prompt) -> torch.Tensor:
        """The prompt's embeddings from its plan's start, its media features included."""
        plan = prompt.plan
        assert plan is not None
        if plan.inputs_embeds is not None:
            return plan.inputs_embeds
        assert self.prefix_cache is not None
        encoded = {key: torch.cat(parts) for key, parts in prompt.parts.items()}
        embeds = self.prefix_cache.embed(plan, prompt.inputs, encoded)
        prompt.parts.clear()
        return embeds

    def _complete(self, state: _State, logits: torch.Tensor) -> dict[int, int]:
        """The prompt is in the cache: keep its blocks, sample the first token of every choice
        from the last position's ``logits`` (one row) and join the decode rows."""
        seq, prompt = state.seq, state.prompt
        assert prompt is not None
        if prompt.plan is not None and self.prefix_cache is not None:
            self.prefix_cache.commit(seq, prompt.plan)
        state.prompt = None
        state.position = seq.prompt.num_tokens
        if seq.live_choices and seq.live_choices[0].output_ids:
            self._resume(state, prompt.cache)
            return {}
        n = seq.sampling.n
        cache = prompt.cache
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.expand(n, -1).clone()
        state.rows = list(range(n))
        state.counts = self._counts(seq, n)
        tokens = self._sample(seq, state, logits)
        self._join(state, cache)
        return tokens

    def _begin(self, seq: Sequence) -> _State:
        inputs = self._to_device(seq.prompt.model_inputs)
        positions, rope_delta = self.family.prefill_positions(inputs)
        fresh = seq.num_preemptions == 0
        plan = self.prefix_cache.plan(seq, inputs, record=fresh) if self.prefix_cache else None
        if plan is None:
            prompt = _Prompt(inputs, positions, self._new_cache(), 0, None)
        else:
            prompt = _Prompt(inputs, positions, plan.cache, plan.start, plan)
            assert self.prefix_cache is not None and self.prefix_cache.embedder is not None
            prompt.units = self.prefix_cache.embedder.units(plan.slots, plan.start)
            if fresh:
                seq.num_cached_tokens = plan.start
        generator = self._parked.pop(seq.seq_id, None)
        if generator is None:
            generator = make_generator(seq.sampling.seed, self.device)
        state = _State(seq, [], rope_delta, generator)
        state.prompt = prompt
        self._states[seq.seq_id] = state
        return state

    def _encode_unit(self, prompt: _Prompt) -> None:
        assert prompt.plan is not None and self.prefix_cache is not None
        embedder = self.prefix_cache.embedder
        assert embedder is not None
        slot, unit = prompt.units[0]
        done = self._advance(
            prompt, partial(embedder.encode_unit, prompt.inputs, prompt.plan.slots, slot, unit)
        )
        if done is None:
            return
        prompt.units.pop(0)
        prompt.parts.setdefault(slot.identity, []).append(done.result)

    def _advance(self, prompt: _Prompt, start: Callable[[], Any]) -> SlicedCall | None:
        """The next slice of ``prompt``'s paused call, or of ``start`` begun now: the call once
        it has returned, else None (it stays paused in ``prompt``). A slice is
        ``vision_slice_s`` while rows decode (they wait for it), else as long as it takes."""
        call = prompt.paused or SlicedCall(start)
        prompt.paused = None
        decoding = any(group.num_rows for group in self._groups)
        if call.advance(self.vision_slice_s if decoding else math.inf):
            return call
        prompt.paused = call
        return None

    def _resume(self, state: _State, cache: Any) -> None:
        """After a preemption: feed the live choices' generated tokens (but the last, which is
        fed by the next decode step) after the recomputed prompt."""
        seq = state.seq
        live = seq.live_choices
        state.rows = [c.index for c in live]
        outputs = torch.tensor([c.output_ids for c in live], device=self.device)
        if len(live) > 1:
            cache.batch_repeat_interleave(len(live))
        fed = outputs.shape[1] - 1
        if fed:
            text = torch.full((len(live),), state.position + state.rope_delta, device=self.device)
            positions = torch.cat(
                [self.family.decode_positions(text + j) for j in range(fed)], dim=-1
            )
            self._forward({"input_ids": outputs[:, :fed]}, positions, cache)
            state.position += fed
        state.last_tokens = outputs[:, -1]
        counts = self._counts(seq, len(live))
        if counts is not None:
            counts.scatter_add_(1, outputs, torch.ones_like(outputs, dtype=counts.dtype))
        state.counts = counts
        self._join(state, cache)

    # -- decode --------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self) -> dict[int, dict[int, int] | Exception]:
        """One step for every decoding row: one forward per group (one group when the family
        batches). Returns seq_id → (choice index → next token), or the error that failed it."""
        results: dict[int, dict[int, int] | Exception] = {}
        for group in self._groups:
            if not group.states:
                continue
            try:
                logits = self._decode_forward(group)
            except Exception as exc:  # the forward is shared: every row of the group fails
                log.exception("a batched decode step failed")
                for state in group.states:
                    results[state.seq.seq_id] = exc
                continue
            offset = 0
            for state in group.states:
                rows = len(state.rows)
                state.position += 1
                try:
                    results[state.seq.seq_id] = self._sample(
                        state.seq, state, logits[offset : offset + rows]
                    )
                except Exception as exc:  # one sequence's sampling or grammar: only it fails
                    results[state.seq.seq_id] = exc
                offset += rows
        return results

    def _decode_forward(self, group: _Group) -> torch.Tensor:
        tokens: list[torch.Tensor] = []
        text: list[int] = []
        for state in group.states:
            assert state.last_tokens is not None
            tokens.append(state.last_tokens)
            text += [state.position + state.rope_delta] * len(state.rows)
        input_ids = torch.cat(tokens).view(-1, 1)
        positions = self.family.decode_positions(
            torch.tensor(text, dtype=torch.long, device=self.device)
        )
        keep = None  # False over each row's left padding
        if any(group.pads):
            pads = torch.tensor(group.pads, device=self.device).unsqueeze(1)
            keep = torch.arange(group.length + 1, device=self.device).unsqueeze(0) >= pads
        if self._direct is not None:
            return self._direct(input_ids, positions, keep, group.cache)
        inputs: dict[str, Any] = {"input_ids": input_ids}
        if keep is not None:
            inputs["attention_mask"] = keep.long()
        return self._forward(inputs, positions, group.cache)

    # -- rows joining and leaving --------------------------------------------------------------

    def _join(self, state: _State, cache: Any) -> None:
        group = self._shared if self.batchable else _Group(shared=False)
        if not group.shared:
            self._groups.append(group)
        rows = len(state.rows)
        if group.cache is None:
            group.cache, group.pads = cache, [0] * rows
        else:
            length, new = group.length, int(cache.get_seq_length())
            if new < length:
                _pad_left(cache, length - new)
                group.pads += [length - new] * rows
            else:
                _pad_left(group.cache, new - length)
                group.pads = [p + new - length for p in group.pads] + [0] * rows
            for mine, theirs in zip(group.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([mine.keys, theirs.keys])
                mine.values = torch.cat([mine.values, theirs.values])
        group.states.append(state)
        state.group = group

    def retire(self, seq: Sequence, finished: set[int]) -> None:
        """Drop the rows of choices that finished; the others keep decoding."""
        state = self._states.get(seq.seq_id)
        if state is None or not finished:
            return
        keep = [i for i, row in enumerate(state.rows) if row not in finished]
        if not keep:
            self.free(seq)
            return
        self._leave(state, keep)
        index = torch.tensor(keep, device=self.device)
        state.rows = [state.rows[i] for i in keep]
        if state.counts is not None:
            state.counts = state.counts[index]
        if state.last_tokens is not None:
            state.last_tokens = state.last_tokens[index]

    def _leave(self, state: _State, keep: list[int]) -> None:
        """Keep only rows ``keep`` (indices into ``state.rows``) of ``state`` in its group."""
        group = state.group
        if group is None:
            return
        offset = 0
        for other in group.states:
            if other is state:
                break
            offset += len(other.rows)
        dropped = {offset + i for i in range(len(state.rows)) if i not in keep}
        remaining = [i for i in range(group.num_rows) if i not in dropped]
        if not keep:
            group.states.remove(state)
            state.group = None
        if not remaining:
            group.cache, group.pads = None, []
            if not group.shared:
                self._groups.remove(group)
            return
        group.cache.batch_select_indices(torch.tensor(remaining, device=self.device))
        group.pads = [group.pads[i] for i in remaining]
        cut = min(group.pads)
        if cut:  # columns that are padding in every row
            for layer in group.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
            group.pads = [p - cut for p in group.pads]

    def free(self, seq: Sequence) -> None:
        """Forget ``seq`` (finished, aborted or failed); an answered conversation's KV is kept
        for the next turn by the prompt cache."""
        state = self._states.pop(seq.seq_id, None)
        self._parked.pop(seq.seq_id, None)
        answer = None
        if state is not None:
            _abandon(state)
            if self.prefix_cache is not None and _is_answered(seq, state):
                answer = self._row_cache(state, 0)
            self._leave(state, [])
        if self.prefix_cache is None:
            return
        if answer is not None:
            self.prefix_cache.keep_answer(seq, answer)
        self.prefix_cache.release(seq.seq_id)

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s KV; it prefills again (prompt, then its generated tokens) later."""
        state = self._states.pop(seq.seq_id, None)
        if state is not None:
            _abandon(state)
            self._leave(state, [])
            self._parked[seq.seq_id] = state.generator
        if self.prefix_cache is not None:
            self.prefix_cache.release(seq.seq_id)
        seq.num_computed_tokens = 0

    def _row_cache(self, state: _State, row: int) -> Any:
        """A cache holding row ``row`` of ``state``, padding cut off (views, not copies)."""
        group = state.group
        if group is None or group.cache is None:
            return None
        index = sum(len(s.rows) for s in group.states[: group.states.index(state)]) + row
        return _cache_row(self._new_cache(), group.cache, index, group.pads[index])

    # -- readings ------------------------------------------------------------------------------

    def prompt_cache_stats(self) -> PromptCacheStats | None:
        return self.prefix_cache.stats() if self.prefix_cache else None

    @property
    def num_active(self) -> int:
        return len(self._states)

    def kv_bytes(self) -> int:
        """Bytes the decode groups' caches hold now, padding included (read from any thread:
        a snapshot of what the step thread may be changing)."""
        total = 0
        for group in list(self._groups):
            cache = group.cache
            if cache is not None:
                for layer in list(cache.layers):
                    keys = layer.keys
                    total += 2 * keys.numel() * keys.element_size()
        return total

    def describe(self) -> str:
        """One line about the decode groups (for the per-step debug log)."""
        parts = []
        for group in self._groups:
            if group.num_rows:
                cells = group.num_rows * group.length
                waste = sum(group.pads) / cells if cells else 0.0
                parts.append(f"{group.num_rows} rows x {group.length} ({waste:.0%} padding)")
        return ", ".join(parts) or "no rows"

    # -- helpers -------------------------------------------------------------------------------

    def _forward(self, inputs: dict[str, Any], positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(
            **inputs,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        return out.logits[:, -1, :].float()

    def _fill(self, inputs: dict[str, Any], positions: torch.Tensor, cache: Any) -> None:
        """The KV of a prompt chunk that is not the prompt's last, through the decoder alone:
        no token is sampled after it, so the output head, a vocabulary-wide product (Gemma 3's
        tied 262,144 x 2,560 reads 1.3 GB of weights for its one row), is skipped, as vLLM
        computes logits only where it samples. ``model.model`` is what transformers' image-text
        models run before their head, with the same arguments (positions, M-RoPE and masks
        included); a model without one takes the whole forward."""
        body = getattr(self.model, "model", None)
        if not isinstance(body, torch.nn.Module):
            self._forward(inputs, positions, cache)
            return
        body(**inputs, position_ids=positions, use_cache=True, **{self.cache_kwarg: cache})

    def _sample(self, seq: Sequence, state: _State, logits: torch.Tensor) -> dict[int, int]:
        if logits.shape[-1] > self.num_tokens:
            logits[:, self.num_tokens :] = float("-inf")
        if seq.logits_processors:
            outputs = [seq.choices[row].output_ids for row in state.rows]
            for processor in seq.logits_processors:
                processor(logits, state.rows, outputs)
        if state.counts is not None:
            apply_penalties(logits, state.counts, seq.sampling)
        tokens = sample(logits, seq.sampling, state.generator)
        if state.counts is not None:
            state.counts[torch.arange(len(state.rows), device=self.device), tokens] += 1
        state.last_tokens = tokens
        return dict(zip(state.rows, tokens.tolist(), strict=True))

    def _counts(self, seq: Sequence, n: int) -> torch.Tensor | None:
        if not (seq.sampling.frequency_penalty or seq.sampling.presence_penalty):
            return None
        vocab = self.model.config.get_text_config(decoder=True).vocab_size
        return torch.zeros(n, vocab, dtype=torch.float32, device=self.device)

    def _new_cache(self) -> Any:
        return new_cache(self.model.config)

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moved = {}
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device)
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            moved[name] = tensor
        return moved


def default_kv_bytes(device: torch.device) -> int:
    """The KV budget when the settings leave it at 0: 60 % of the GPU memory free after loading
    the model, or a quarter of the machine's RAM on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return physical_memory() // 4


def similar_lengths(items: list[T], length: Callable[[T], int]) -> list[list[T]]:
    """``items`` in groups that may share a left-padded forward: longest first, a group grows
    while its padded size (rows x longest) stays within ``PAD_SLACK`` of its real tokens."""
    groups: list[list[T]] = []
    real = 0
    for item in sorted(items, key=length, reverse=True):
        size = length(item)
        if groups and (len(groups[-1]) + 1) * length(groups[-1][0]) <= PAD_SLACK * (real + size):
            groups[-1].append(item)
            real += size
        else:
            groups.append([item])
            real = size
    return groups


def _cache_row(into: Any, cache: Any, index: int, pad: int) -> Any:
    """``into`` (an empty cache) holding row ``index`` of ``cache`` without its first ``pad``
    columns (views, not copies)."""
    for mine, theirs in zip(into.layers, cache.layers, strict=True):
        keys = theirs.keys[index : index + 1, :, pad:]
        values = theirs.values[index : index + 1, :, pad:]
        mine.lazy_initialization(keys, values)
        mine.keys, mine.values = keys, values
    return into


def _pad_left(cache: Any, amount: int) -> None:
    for layer in cache.layers:
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, amount, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, amount, 0))


def _kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV bytes one token of one row takes in every layer (an upper bound for sliding layers)."""
    text = config.get_text_config(decoder=True)
    heads = int(getattr(text, "num_attention_heads", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    layers = int(text.num_hidden_layers)
    return 2 * layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def _is_answered(seq: Sequence, state: _State) -> bool:
    """One choice that ended normally: its cache holds the prompt and the answer (but its last
    token), computed in full, so the next turn of the conversation may reuse it."""
    choice = seq.choices[0]
    return (
        seq.is_finished
        and len(seq.choices) == 1
        and state.rows == [0]
        and choice.finish_reason not in (None, FinishReason.ABORT)
    )


def _abandon(state: _State) -> None:
    """Unwind a vision encoding left paused by a sequence that goes away."""
    if state.prompt is not None and state.prompt.paused is not None:
        state.prompt.paused.close()
        state.prompt.paused = None
