"""Owns the model and every tensor: prefill, decode steps, sampling, per-sequence KV caches.

Each running sequence has its own ``DynamicCache`` with one row per live choice: the prompt is
prefilled once (batch 1) and the cache repeated ``n`` times, so ``n`` choices cost one prefill.
Positions are always passed explicitly (3-D for M-RoPE families), so no per-model state such as
Qwen2-VL's ``rope_deltas`` is shared between sequences. Makes no scheduling decisions.

With a ``PrefixCache`` (the automatic prompt cache) a prefill starts after the prompt's longest
cached block-aligned prefix and feeds ``inputs_embeds`` that prefix_cache.py built (cached vision
features included); positions are still computed for the whole prompt, then sliced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlmserve.engine.local.loader import LoadedModel
from vlmserve.engine.local.prefix_cache import PrefixCache
from vlmserve.engine.local.sampler import apply_penalties, make_generator, sample
from vlmserve.engine.local.sequence import Sequence
from vlmserve.engine.types import FinishReason, PromptCacheStats


@dataclass(slots=True)
class _State:
    cache: Any
    rows: list[int]  # choice index of each cache row
    position: int  # text position of the next token to feed
    rope_delta: int
    generator: torch.Generator
    counts: torch.Tensor | None  # rows x vocab generated-token counts, only with penalties
    last_tokens: torch.Tensor | None = None  # rows


class ModelRunner:
    def __init__(self, loaded: LoadedModel, prefix_cache: PrefixCache | None = None) -> None:
        self.model = loaded.model
        self.family = loaded.family
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.eos_token_ids = loaded.eos_token_ids
        self.cache_kwarg = loaded.cache_kwarg
        self.num_tokens = len(loaded.tokenizer)  # logits past the tokenizer are never sampled
        self.prefix_cache = prefix_cache
        self._states: dict[int, _State] = {}

    @torch.inference_mode()
    def prefill(self, seq: Sequence) -> dict[int, int]:
        """Run the prompt, set ``seq.num_cached_tokens``; returns choice index → first token."""
        inputs = self._to_device(seq.prompt.model_inputs)
        positions, rope_delta = self.family.prefill_positions(inputs)
        plan = self.prefix_cache.plan(seq, inputs) if self.prefix_cache else None
        if plan is None:
            cache = self._new_cache()
            logits = self._forward(inputs, positions, cache)
        else:
            cache = plan.cache
            embeds = {"inputs_embeds": plan.inputs_embeds}
            logits = self._forward(embeds, positions[..., plan.start :], cache)
            seq.num_cached_tokens = plan.start
            assert self.prefix_cache is not None
            self.prefix_cache.commit(seq, plan)
        n = seq.sampling.n
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.expand(n, -1).clone()
        state = _State(
            cache=cache,
            rows=list(range(n)),
            position=seq.prompt.num_tokens,
            rope_delta=rope_delta,
            generator=make_generator(seq.sampling.seed, self.device),
            counts=self._counts(seq, n),
        )
        self._states[seq.seq_id] = state
        return self._sample(seq, state, logits)

    @torch.inference_mode()
    def decode(self, seq: Sequence) -> dict[int, int]:
        """One step for every live choice of ``seq``; returns choice index → next token."""
        state = self._states[seq.seq_id]
        assert state.last_tokens is not None
        num_rows = len(state.rows)
        text_positions = torch.full(
            (num_rows,), state.position + state.rope_delta, dtype=torch.long, device=self.device
        )
        positions = self.family.decode_positions(text_positions)
        inputs = {"input_ids": state.last_tokens.view(num_rows, 1)}
        logits = self._forward(inputs, positions, state.cache)
        state.position += 1
        return self._sample(seq, state, logits)

    def retire(self, seq: Sequence, finished: set[int]) -> None:
        """Drop the cache rows of choices that finished; the others keep decoding."""
        state = self._states.get(seq.seq_id)
        if state is None or not finished:
            return
        keep = [i for i, row in enumerate(state.rows) if row not in finished]
        if not keep:
            self.free(seq)
            return
        index = torch.tensor(keep, device=self.device)
        state.cache.batch_select_indices(index)
        state.rows = [state.rows[i] for i in keep]
        if state.counts is not None:
            state.counts = state.counts[index]
        if state.last_tokens is not None:
            state.last_tokens = state.last_tokens[index]

    def free(self, seq: Sequence) -> None:
        state = self._states.pop(seq.seq_id, None)
        if self.prefix_cache is None:
            return
        if state is not None and _is_answered(seq, state):
            self.prefix_cache.keep_answer(seq, state.cache)
        self.prefix_cache.release(seq.seq_id)

    def prompt_cache_stats(self) -> PromptCacheStats | None:
        return self.prefix_cache.stats() if self.prefix_cache else None

    @property
    def num_active(self) -> int:
        return len(self._states)

    def _forward(self, inputs: dict[str, Any], positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(
            **inputs,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        return out.logits[:, -1, :].float()

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
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        moved = {}
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device)
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            moved[name] = tensor
        return moved


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
