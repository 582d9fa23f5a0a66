"""The upstream's SSE stream → our events, without I/O: framing, then per-chunk bookkeeping.

Token counts: OpenAI chunks do not say how many tokens a delta took. With ``n == 1`` and usage on
every chunk (``continuous_usage_stats``), a delta is worth the growth of ``completion_tokens``;
otherwise each non-empty delta counts one token (what vLLM and SGLang send without speculative
decoding) and the difference to the final ``completion_tokens`` is added before ``Finished``,
so the total always equals what the upstream billed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from vlmserve.engine.remote.envelope import read_envelope
from vlmserve.engine.remote.failures import error_for_body
from vlmserve.engine.types import Delta, Event, Finished, FinishReason, PromptUsage, ToolCall
from vlmserve.errors import UpstreamError

DONE = "[DONE]"

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "abort": FinishReason.ABORT,
}


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined); comments skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def parse_chunk(data: str, replica: str) -> Mapping[str, Any]:
    """One chunk object; an error object in the stream raises the error it carries."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise UpstreamError(f"The model server {replica} sent a malformed chunk.") from exc
    if not isinstance(chunk, dict):
        raise UpstreamError(f"The model server {replica} sent a malformed chunk.")
    if "error" in chunk or chunk.get("object") == "error":
        raise error_for_body(chunk, replica)
    return chunk


def prompt_usage_of(usage: Mapping[str, Any]) -> PromptUsage | None:
    """``usage`` → PromptUsage; cached tokens from ``prompt_tokens_details`` or the top level."""
    prompt_tokens = usage.get("prompt_tokens")
    if not isinstance(prompt_tokens, int):
        return None
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    cached = details.get("cached_tokens")
    if not isinstance(cached, int):
        cached = usage.get("cached_tokens")
    image_tokens, video_tokens = modality_tokens(details) or (0, 0)
    return PromptUsage(
        prompt_tokens=prompt_tokens,
        image_tokens=image_tokens,
        video_tokens=video_tokens,
        cached_tokens=_int(cached),
    )


def modality_tokens(details: Mapping[str, Any]) -> tuple[int, int] | None:
    """(image, video) prompt tokens from ``prompt_tokens_details``, in whichever shape the server
    sends them: vLLM's ``multimodal_tokens: {"image": N, "video": M}``, or ``image_tokens`` /
    ``video_tokens`` (SGLang, another vlmserve); None when the server sent neither."""
    by_modality = details.get("multimodal_tokens")
    if isinstance(by_modality, Mapping):
        return _int(by_modality.get("image")), _int(by_modality.get("video"))
    if "image_tokens" in details or "video_tokens" in details:
        return _int(details.get("image_tokens")), _int(details.get("video_tokens"))
    return None


def has_modality_tokens(usage: Mapping[str, Any]) -> bool:
    details = usage.get("prompt_tokens_details")
    return isinstance(details, Mapping) and modality_tokens(details) is not None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamState:
    """What one generation's chunks said so far; ``feed`` returns the deltas to emit."""

    def __init__(self, n: int, replica: str, envelope: bool = False) -> None:
        self.n = n
        self.replica = replica
        self.prompt_usage: PromptUsage | None = None  # the latest the upstream reported
        self.has_modalities = False  # ... with a per-modality breakdown
        self.own_modalities: tuple[int, int] | None = None  # (image, video) in our own count
        # The replica answers in the call envelope (``envelope.py``): its text is held per choice
        # and read at the end; deltas meanwhile carry only token counts.
        self.envelope = envelope
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.completion_tokens: int | None = None  # likewise, all choices together
        self.num_tokens = [0] * n  # tokens attributed to our deltas so far
        self.reasons: list[FinishReason | None] = [None] * n
        self.tool_calls: list[dict[int, _ToolCallParts]] = [{} for _ in range(n)]
        self.budget: int | None = None  # completion tokens allowed per choice
        self.is_cut_short = False  # every choice hit the budget: stop reading

    def feed(self, chunk: Mapping[str, Any]) -> list[Delta]:
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            reported = prompt_usage_of(usage)
            if reported is not None:
                self.prompt_usage = reported
                self.has_modalities = has_modality_tokens(usage)
            if isinstance(usage.get("completion_tokens"), int):
                self.completion_tokens = usage["completion_tokens"]
        deltas = []
        for choice in chunk.get("choices") or ():
            delta = self._feed_choice(choice)
            if delta is not None:
                deltas.append(delta)
        return deltas

    def _feed_choice(self, choice: Mapping[str, Any]) -> Delta | None:
        index = choice.get("index", 0)
        if not isinstance(index, int) or not 0 <= index < self.n:
            raise UpstreamError(f"The model server {self.replica} sent an unknown choice {index}.")
        if self.reasons[index] is not None:
            return None
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        if self.envelope and text:
            self.texts[index].append(text)
            text = ""
        has_tool_call = self._add_tool_calls(index, delta.get("tool_calls"))
        has_output = bool(text) or has_tool_call or bool(self.envelope and delta.get("content"))
        tokens = self._tokens_of(index, has_output)
        self.num_tokens[index] += tokens
        reason = choice.get("finish_reason")
        if reason:
            self.reasons[index] = FINISH_REASONS.get(reason, FinishReason.STOP)
        self._apply_budget(index)
        return Delta(index, text, tokens) if text or tokens else None

    def _tokens_of(self, index: int, has_output: bool) -> int:
        if self.n == 1 and self.completion_tokens is not None:
            return max(0, self.completion_tokens - self.num_tokens[0])
        return 1 if has_output else 0

    def _add_tool_calls(self, index: int, calls: Any) -> bool:
        if not isinstance(calls, list) or not calls:
            return False
        for call in calls:
            parts = self.tool_calls[index].setdefault(call.get("index", 0), _ToolCallParts())
            parts.id = call.get("id") or parts.id
            function = call.get("function") or {}
            parts.name = function.get("name") or parts.name
            parts.arguments.append(function.get("arguments") or "")
        return True

    def _apply_budget(self, index: int) -> None:
        if self.budget is None or self.reasons[index] is not None:
            return
        if self.num_tokens[index] >= self.budget:
            self.reasons[index] = FinishReason.LENGTH
            self.is_cut_short = all(r is not None for r in self.reasons)

    def finish(self) -> list[Event]:
        """The closing events: a token reconciliation if needed, then ``Finished`` per choice."""
        unfinished = [i for i, reason in enumerate(self.reasons) if reason is None]
        if unfinished:
            raise UpstreamError(
                f"The model server {self.replica} ended the stream before choice "
                f"{unfinished[0]} finished."
            )
        events: list[Event] = []
        missing = (self.completion_tokens or 0) - sum(self.num_tokens)
        if missing > 0 and not self.is_cut_short:
            events.append(Delta(self.n - 1, "", missing))
        for i, reason in enumerate(self.reasons):
            assert reason is not None
            usage = self.prompt_usage if i == self.n - 1 else None
            calls = self._calls(i)
            if self.envelope:
                content, envelope_calls = read_envelope("".join(self.texts[i]))
                if content:
                    events.append(Delta(i, content, 0))
                calls = (*calls, *envelope_calls)
            if calls and reason is FinishReason.STOP:
                reason = FinishReason.TOOL_CALLS
            events.append(Finished(i, reason, calls, usage))
        return events

    def _calls(self, index: int) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(parts.id, parts.name, "".join(parts.arguments))
            for _, parts in sorted(self.tool_calls[index].items())
        )
