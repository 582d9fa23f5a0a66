"""Who runs next, and how much: vLLM V1's token-budget scheduling, nano-vllm sized.

Each step every prefilled running sequence decodes one token per live choice (one batched
forward), and what is left of ``max_num_batched_tokens`` goes to prompts: first the prefills
already under way, oldest first, then waiting sequences admitted in arrival order while fewer
than ``max_num_seqs`` run and their KV fits the budget. A long prompt is thus prefilled in
chunks between decode steps, and arrival order is never overtaken (a waiting sequence that does
not fit blocks the ones behind it), so nobody starves.

KV is counted in tokens (rows x (prompt + generated)) against ``kv_tokens``. When the decoding
rows would outgrow it, the newest running sequence is preempted: its KV is freed and it goes back
to the head of the queue, to be recomputed (vLLM's recompute preemption). One sequence alone
always runs, whatever its size. Never touches torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vlmserve.engine.local.sequence import Sequence, SequenceStatus

MIN_PREFILL_CHUNK = 32  # prompt tokens a step always leaves room for, however many rows decode


@dataclass(slots=True)
class Plan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, token budget)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_decode_rows(self) -> int:
        return sum(s.num_rows for s in self.decode)


class Scheduler:
    def __init__(
        self,
        max_num_seqs: int = 1,
        max_num_batched_tokens: int = 512,
        kv_tokens: int | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_tokens = kv_tokens  # None: unbounded
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0  # in all
        self.num_preempted = 0  # preempted sequences waiting now (as of the last schedule)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> Plan:
        plan = Plan()
        self._preempt(plan)
        plan.decode = [s for s in self.running if s.is_prefilled]
        budget = max(
            self.max_num_batched_tokens - plan.num_decode_rows,
            min(MIN_PREFILL_CHUNK, self.max_num_batched_tokens),
        )
        for seq in self.running:
            if budget <= 0:
                break
            if not seq.is_prefilled:
                chunk = min(budget, seq.prompt.num_tokens - seq.num_computed_tokens)
                plan.prefill.append((seq, chunk))
                budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # room for its KV and the next token of every row; none in a step that preempted
            growth = plan.num_decode_rows + seq.num_rows
            if self.running and (plan.preempted or not self._fits(seq.num_kv_tokens + growth)):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chunk = min(budget, seq.prompt.num_tokens)
            plan.prefill.append((seq, chunk))
            budget -= chunk
        self.num_preempted = sum(s.num_preemptions > 0 for s in self.waiting)
        return plan

    def _preempt(self, plan: Plan) -> None:
        """Make room for one more token in every decoding row by preempting the newest."""
        if self.kv_tokens is None:
            return
        while len(self.running) > 1:
            growth = sum(s.num_rows for s in self.running if s.is_prefilled)
            if self._fits(growth):
                return
            victim = self.running.pop()
            victim.status = SequenceStatus.WAITING
            victim.num_preemptions += 1
            self.num_preemptions += 1
            self.waiting.appendleft(victim)
            plan.preempted.append(victim)

    def _fits(self, extra: int) -> bool:
        if self.kv_tokens is None:
            return True
        used = sum(s.num_kv_tokens for s in self.running)
        return used + extra <= self.kv_tokens

    def find(self, request_id: str) -> list[Sequence]:
        return [s for s in (*self.waiting, *self.running) if s.request_id == request_id]

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def drain(self) -> list[Sequence]:
        """Remove and return every sequence (engine shutdown)."""
        seqs = [*self.waiting, *self.running]
        self.waiting.clear()
        self.running.clear()
        return seqs
