"""Who runs next: first come, first served, at most ``max_num_seqs`` sequences in flight.

A waiting sequence is prefilled as soon as there is room; otherwise every running sequence takes
one decoding step. With ``max_num_seqs=1`` requests run strictly one after another; above that,
running sequences take turns step by step (a batching runner can then run them in one forward).
Never touches torch.
"""

from __future__ import annotations

from collections import deque

from vlmserve.engine.local.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, max_num_seqs: int = 1) -> None:
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences to run now and whether this is their prefill."""
        if self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            return [seq], True
        return list(self.running), False

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
