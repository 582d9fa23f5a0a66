"""The token-budget scheduler on stand-in sequences (no model): budgets, FCFS, preemption."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmserve.engine.local.scheduler import Scheduler
from vlmserve.engine.local.sequence import SequenceStatus


@dataclass(eq=False)
class FakeSeq:
    """What the scheduler reads of a ``Sequence``."""

    name: str
    num_prompt: int
    num_rows: int = 1
    num_computed_tokens: int = 0
    num_generated: int = 0
    num_preemptions: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    request_id: str = ""
    prompt: Any = field(init=False)

    def __post_init__(self) -> None:
        self.prompt = type("P", (), {"num_tokens": self.num_prompt})()

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed_tokens >= self.num_prompt

    @property
    def num_kv_tokens(self) -> int:
        return self.num_rows * (self.num_prompt + self.num_generated)


def run(scheduler: Scheduler, steps: int = 1) -> list[Any]:
    """Schedule ``steps`` times, applying each plan as a runner would; returns the plans."""
    plans = []
    for _ in range(steps):
        plan = scheduler.schedule()
        for seq in plan.preempted:
            seq.num_computed_tokens = 0
        for seq in plan.decode:
            seq.num_generated += 1
        for seq, budget in plan.prefill:
            seq.num_computed_tokens += budget
        plans.append(plan)
    return plans


def names(pairs: list[tuple[Any, int]]) -> list[tuple[str, int]]:
    return [(s.name, n) for s, n in pairs]


def test_a_long_prompt_is_chunked_while_running_sequences_decode() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_num_batched_tokens=64)
    a = FakeSeq("a", 10)
    scheduler.add(a)  # type: ignore[arg-type]
    run(scheduler)
    b = FakeSeq("b", 150)
    scheduler.add(b)  # type: ignore[arg-type]
    plans = run(scheduler, 3)
    assert [p.decode for p in plans] == [[a], [a], [a]]
    assert [names(p.prefill) for p in plans] == [[("b", 63)], [("b", 63)], [("b", 24)]]
    assert run(scheduler)[0].decode == [a, b]


def test_max_num_seqs_caps_the_running_set_and_order_is_first_come() -> None:
    scheduler = Scheduler(max_num_seqs=2, max_num_batched_tokens=512)
    seqs = [FakeSeq(str(i), 5) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)  # type: ignore[arg-type]
    plan = run(scheduler)[0]
    assert names(plan.prefill) == [("0", 5), ("1", 5)]
    scheduler.remove(seqs[0])  # type: ignore[arg-type]
    assert names(run(scheduler)[0].prefill) == [("2", 5)]


def test_a_waiting_sequence_that_does_not_fit_blocks_later_ones() -> None:
    scheduler = Scheduler(max_num_seqs=8, max_num_batched_tokens=512, kv_tokens=100)
    first, big, small = FakeSeq("first", 40), FakeSeq("big", 80), FakeSeq("small", 5)
    for seq in (first, big, small):
        scheduler.add(seq)  # type: ignore[arg-type]
    plan = run(scheduler)[0]
    assert names(plan.prefill) == [("first", 40)]  # small would fit, but big came first
    scheduler.remove(first)  # type: ignore[arg-type]
    assert names(run(scheduler)[0].prefill) == [("big", 80), ("small", 5)]


def test_decoding_past_the_kv_budget_preempts_the_newest_to_the_head_of_the_queue() -> None:
    scheduler = Scheduler(max_num_seqs=8, max_num_batched_tokens=512, kv_tokens=40)
    old, new = FakeSeq("old", 10), FakeSeq("new", 10, num_rows=2)
    for seq in (old, new):
        scheduler.add(seq)  # type: ignore[arg-type]
    run(scheduler)  # 10 + 2 * 10 = 30 tokens, then 3 more per step: 33, 36, 39, then no room
    plans = run(scheduler, 4)
    assert [p.preempted for p in plans] == [[], [], [], [new]]
    assert plans[3].decode == [old] and not plans[3].prefill  # not readmitted at once
    assert scheduler.waiting[0] is new and new.num_preemptions == 1
    assert scheduler.num_preemptions == 1 and scheduler.num_preempted == 1
    assert old in scheduler.running


def test_one_sequence_alone_runs_whatever_its_size() -> None:
    scheduler = Scheduler(max_num_seqs=8, max_num_batched_tokens=512, kv_tokens=10)
    huge = FakeSeq("huge", 50)
    scheduler.add(huge)  # type: ignore[arg-type]
    plans = run(scheduler, 3)
    assert names(plans[0].prefill) == [("huge", 50)]
    assert not any(p.preempted for p in plans) and plans[2].decode == [huge]
