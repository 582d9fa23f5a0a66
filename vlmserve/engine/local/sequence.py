"""Per-request state: the prepared prompt, its choices' tokens and text, and where events go.

A ``Sequence`` never touches tensors (the model runner keeps those) and never decides who runs
(the scheduler does); it turns sampled token ids into ``Delta``/``Finished`` events. When the
request has tools, each choice's text goes through a ``ToolCallParser``: calls become
``ToolCallDelta`` events (never content), and a choice that made calls finishes with
``tool_calls``. Every token still yields one ``Delta`` (its text possibly empty), which carries
the token count.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vlmserve.engine.local.detokenizer import IncrementalDetokenizer
from vlmserve.engine.local.prompt import PreparedPrompt
from vlmserve.engine.local.sampler import LogitsProcessor
from vlmserve.engine.local.stop import StopMatcher
from vlmserve.engine.local.tool_format import ToolCallParser, ToolFormat
from vlmserve.engine.types import (
    Delta,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    Started,
)
from vlmserve.errors import VlmserveError

# Item = an event, or the end of the request: an error, or None when it ended normally.
Item = Event | VlmserveError | None
# Receives the items of one request in order, a batch per step (see ``Sequence.publish``).
Sink = Callable[[list[Item]], None]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Choice:
    index: int
    detokenizer: IncrementalDetokenizer
    stop: StopMatcher
    output_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    tool_parser: ToolCallParser | None = None  # set when the request has tools

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


class Sequence:
    _ids = itertools.count()

    def __init__(
        self,
        request: GenerationRequest,
        prompt: PreparedPrompt,
        max_new_tokens: int,
        tokenizer: Any,
        sink: Sink,
        tool_format: ToolFormat | None = None,
    ) -> None:
        self.seq_id = next(Sequence._ids)
        self.request_id = request.request_id
        self.tenant = request.tenant
        self.sampling: SamplingParams = request.sampling
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.status = SequenceStatus.WAITING
        self.num_cached_tokens = 0  # prompt tokens a prefix cache supplied
        self.num_computed_tokens = 0  # prompt tokens whose KV is computed (chunked prefill)
        self.num_preemptions = 0  # times its KV was freed to be recomputed
        self.logits_processors: list[LogitsProcessor] = []  # e.g. grammar masks, per sequence
        stops = request.sampling.stop
        self.choices = [
            Choice(
                i,
                IncrementalDetokenizer(tokenizer),
                StopMatcher(stops),
                tool_parser=ToolCallParser(tool_format, i) if tool_format else None,
            )
            for i in range(request.sampling.n)
        ]
        self._sink = sink
        self._started = False
        self._outbox: list[Item] = []

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def live_choices(self) -> list[Choice]:
        return [c for c in self.choices if not c.is_finished]

    @property
    def num_rows(self) -> int:
        """Decode rows it takes: one per live choice."""
        return sum(not c.is_finished for c in self.choices)

    @property
    def is_prefilled(self) -> bool:
        return self.num_computed_tokens >= self.prompt.num_tokens

    @property
    def num_kv_tokens(self) -> int:
        """Tokens of KV it holds (or will hold once prefilled): every row, prompt and answer."""
        generated = max((len(c.output_ids) for c in self.live_choices), default=0)
        return self.num_rows * (self.prompt.num_tokens + generated)

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        usage = replace(self.prompt.usage, cached_tokens=self.num_cached_tokens)
        self._emit(Started(usage))

    def publish(self) -> None:
        """Send what this step produced. The step thread calls it after its own bookkeeping
        (freeing a finished sequence), so a caller that sees the end finds the engine free."""
        if self._outbox:
            items, self._outbox = self._outbox, []
            self._sink(items)

    def append_token(self, index: int, token_id: int, is_eos: bool) -> None:
        """Record a sampled token for choice ``index`` and emit what it produced."""
        choice = self.choices[index]
        choice.output_ids.append(token_id)
        if is_eos:
            self._finish(choice, FinishReason.STOP, self._drain(choice))
            return
        text = choice.stop.feed(choice.detokenizer.step(token_id))
        if choice.stop.is_stopped:
            self._finish(choice, FinishReason.STOP, text)
        elif len(choice.output_ids) >= self.max_new_tokens:
            text += self._drain(choice)
            reason = FinishReason.STOP if choice.stop.is_stopped else FinishReason.LENGTH
            self._finish(choice, reason, text)
        else:
            self._emit_text(choice, text)

    def abort(self) -> None:
        for choice in self.live_choices:
            choice.finish_reason = FinishReason.ABORT
            self._emit(Finished(choice.index, FinishReason.ABORT))
        self._close(None)

    def fail(self, error: VlmserveError) -> None:
        for choice in self.live_choices:
            choice.finish_reason = FinishReason.ABORT
        self._close(error)

    def _drain(self, choice: Choice) -> str:
        return choice.stop.feed(choice.detokenizer.flush()) + choice.stop.flush()

    def _finish(self, choice: Choice, reason: FinishReason, text: str) -> None:
        self._emit_text(choice, text, final=True)
        if reason is FinishReason.STOP and choice.tool_parser and choice.tool_parser.num_calls:
            reason = FinishReason.TOOL_CALLS
        choice.finish_reason = reason
        self._emit(Finished(choice.index, reason))
        if not self.live_choices:
            self._close(None)

    def _emit_text(self, choice: Choice, text: str, final: bool = False) -> None:
        """One token's text: a ``Delta`` counting the token, calls as ``ToolCallDelta``s."""
        parser = choice.tool_parser
        if parser is None:
            self._emit(Delta(choice.index, text, 1))
            return
        pieces = parser.feed(text) + (parser.finish() if final else [])
        num_tokens = 1
        for piece in pieces:
            if isinstance(piece, str):
                self._emit(Delta(choice.index, piece, num_tokens))
                num_tokens = 0
            else:
                self._emit(piece)
        if num_tokens:
            self._emit(Delta(choice.index, "", 1))

    def _close(self, error: VlmserveError | None) -> None:
        if self.status is not SequenceStatus.FINISHED:
            self.status = SequenceStatus.FINISHED
            self._emit(error)

    def _emit(self, item: Item) -> None:
        self._outbox.append(item)
