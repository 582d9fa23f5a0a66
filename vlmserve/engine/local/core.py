"""The step thread: the only thread that runs torch code.

Each step is schedule → run → postprocess. The event loop talks to it through an inbox (new
sequences, aborts, jobs) read between steps, so an abort takes effect within one decoding step. A
failure inside one sequence's step fails that sequence only; the thread goes on serving.

Jobs (one-off work on the model's tokenizer, such as grammar preparation) run here too, between
steps. Prompt preparation does not: it runs in prep_pool.py's thread, beside the steps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from vlmserve.engine.local.model_runner import ModelRunner, Prefilled
from vlmserve.engine.local.scheduler import Scheduler
from vlmserve.engine.local.sequence import Sequence
from vlmserve.errors import InternalError, OverloadedError, VlmserveError

log = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self._cv = threading.Condition()
        self._inbox: list[Sequence] = []
        self._aborts: list[str | Sequence] = []
        self._jobs: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._closing = False
        self._num_prefilled = 0  # prompt tokens computed in this step (for the debug log)
        self._thread = threading.Thread(target=self._loop, name="vlmserve-engine-step", daemon=True)

    @property
    def num_waiting(self) -> int:
        """Sequences accepted but not yet prefilled (read from any thread; approximate)."""
        return len(self._inbox) + self.scheduler.num_waiting

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._cv:
            if self._closing:
                raise OverloadedError("The engine is shutting down; retry later.")
            self._inbox.append(seq)
            self._cv.notify()

    def call(self, job: Callable[[], Any]) -> Future[Any]:
        """Run ``job`` on the step thread before the next step; its result arrives in the future."""
        future: Future[Any] = Future()
        with self._cv:
            if self._closing:
                raise OverloadedError("The engine is shutting down; retry later.")
            self._jobs.append((job, future))
            self._cv.notify()
        return future

    def abort(self, target: str | Sequence) -> None:
        """Abort by request id (every sequence with it) or one sequence; unknown: ignored."""
        with self._cv:
            self._aborts.append(target)
            self._cv.notify()

    def close(self, timeout: float | None = None) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while self._receive():
            if self.scheduler.has_work():
                self.step()
        closed = OverloadedError("The engine shut down before this request finished.")
        for seq in self.scheduler.drain() + self._inbox:
            self._finish(seq)
            seq.fail(closed)
            seq.publish()
        for _, future in self._jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(closed)

    def _receive(self) -> bool:
        """Wait for work, then move the inbox into the scheduler; False once closing."""
        with self._cv:
            while not (
                self._closing
                or self._inbox
                or self._aborts
                or self._jobs
                or self.scheduler.has_work()
            ):
                self._cv.wait()
            if self._closing:
                return False
            added, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            jobs, self._jobs = self._jobs, []
        for job, future in jobs:
            _run_job(job, future)
        for seq in added:
            self.scheduler.add(seq)
        for target in aborts:
            self._abort(target)
        return True

    def step(self) -> None:
        plan = self.scheduler.schedule()
        for seq in plan.preempted:
            self.runner.preempt(seq)
        debug = log.isEnabledFor(logging.DEBUG)
        rows = self.runner.describe() if debug else ""
        self._num_prefilled = 0
        if plan.decode:
            self._decode()
        live = [(seq, budget) for seq, budget in plan.prefill if not seq.is_finished]
        for seq, outcome in self.runner.prefill_many(live):
            self._guarded(seq, partial(self._prefilled, seq, outcome))
        if debug:
            log.debug(
                "step: decode %d seqs (%s); prefill %d tokens (budget %d) of %d seqs; "
                "preempted %d; running %d, waiting %d; kv %.1f MiB",
                len(plan.decode),
                rows,
                self._num_prefilled,
                sum(b for _, b in plan.prefill),
                len(plan.prefill),
                len(plan.preempted),
                len(self.scheduler.running),
                self.scheduler.num_waiting,
                self.runner.kv_bytes() / 2**20,
            )

    def _decode(self) -> None:
        results = self.runner.decode()
        for seq in list(self.scheduler.running):
            result = results.get(seq.seq_id)
            if result is None:
                continue
            if isinstance(result, Exception):
                log.error("request %s failed in the engine: %r", seq.request_id, result)
                self._finish(seq)
                seq.fail(_internal(result))
                seq.publish()
                continue
            self._guarded(seq, partial(self._append, seq, result))

    def _prefilled(self, seq: Sequence, outcome: Prefilled | Exception) -> None:
        if isinstance(outcome, Exception):
            raise outcome
        computed, tokens = outcome
        self._num_prefilled += computed  # 0: a vision-encoding unit ran instead
        if tokens is None:  # more chunks to go
            return
        seq.start()  # once: a resumed sequence started before
        if tokens:
            self._append(seq, tokens)

    def _guarded(self, seq: Sequence, work: Callable[[], None]) -> None:
        """Run one sequence's part of the step; its failure fails that sequence only."""
        try:
            work()
        except Exception as exc:  # one request's failure must not stop the thread
            log.exception("request %s failed in the engine", seq.request_id)
            self._finish(seq)
            seq.fail(_internal(exc))
        seq.publish()

    def _append(self, seq: Sequence, tokens: dict[int, int]) -> None:
        finished = set()
        for index, token in tokens.items():
            seq.append_token(index, token, token in self.runner.eos_token_ids)
            if seq.choices[index].is_finished:
                finished.add(index)
        if seq.is_finished:
            self._finish(seq)
        else:
            self.runner.retire(seq, finished)

    def _abort(self, target: str | Sequence) -> None:
        if isinstance(target, Sequence):
            seqs = [target] if not target.is_finished else []
        else:
            seqs = self.scheduler.find(target)
        for seq in seqs:
            self._finish(seq)
            seq.abort()
            seq.publish()

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        self.runner.free(seq)


def _run_job(job: Callable[[], Any], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():  # the caller gave up waiting
        return
    try:
        future.set_result(job())
    except Exception as exc:
        future.set_exception(exc)


def _internal(exc: Exception) -> VlmserveError:
    if isinstance(exc, VlmserveError):
        return exc
    return InternalError(f"The engine failed while generating: {type(exc).__name__}: {exc}")
