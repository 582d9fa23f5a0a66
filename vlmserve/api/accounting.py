"""One chat request's bookkeeping: its key's limits, its metrics, its ledger row.

``ChatAccount.open`` admits the request (429 when a limit or the quota refuses it);
``reserve_tokens`` is called once the prompt is counted; ``track`` wraps the running
generation's events to time the tokens; the request ends exactly once, in whichever comes first:
the events run out (``ok``), the engine raises (the error's code), the events are closed early
(``aborted``, with what was generated until then), the request fails before generating
(``fail``), or the middleware's safety net when the response is over (``abandon``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from vlmserve.api.auth import Identity
from vlmserve.api.limits import Admission
from vlmserve.api.services import Services
from vlmserve.engine.types import Delta, Event, Finished, PromptUsage
from vlmserve.errors import ModelNotFoundError, QuotaExceededError, RateLimitError, VlmserveError
from vlmserve.serving.chat import ChatRun
from vlmserve.storage.usage import UsageRow


class ChatAccount:
    def __init__(
        self,
        services: Services,
        identity: Identity,
        model: str,
        state: dict[str, Any],
        admission: Admission,
    ) -> None:
        self._services = services
        self._identity = identity
        self._model = model
        self._state = state
        self._admission = admission
        self._arrived: float = state.get("arrived", time.perf_counter())
        self._usage = PromptUsage(0)
        self._completion_tokens = 0
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        self._reason = "abort"
        self.is_finished = False

    @classmethod
    def open(
        cls, services: Services, identity: Identity, requested_model: str, state: dict[str, Any]
    ) -> ChatAccount:
        """Admit the request under its key's limits; raises ``RateLimitError`` (429)."""
        model = _model_label(services, requested_model)
        state["model"] = model
        try:
            admission = services.limiter.admit(
                identity.id, identity.tier, identity.quota_tokens, time.monotonic()
            )
        except RateLimitError as exc:
            _count_refusal(services, model, exc)
            raise
        account = cls(services, identity, model, state, admission)
        state["account"] = account
        return account

    @property
    def needs_token_count(self) -> bool:
        return self._admission.has_tpm

    def reserve_tokens(self, tokens: int) -> None:
        """Reserve prompt + max_tokens under the TPM limit; raises ``RateLimitError``."""
        try:
            self._admission.reserve(tokens, time.monotonic())
        except RateLimitError as exc:
            self.is_finished = True  # refused: not billed, not in the ledger
            self._admission.release(0, time.monotonic())
            _count_refusal(self._services, self._model, exc)
            raise

    def track(self, run: ChatRun) -> None:
        """Observe ``run``'s events from now on (replaces ``run.events``)."""
        self._usage = run.usage
        self._services.metrics.queue.labels(self._model).observe(
            time.perf_counter() - self._arrived
        )
        run.events = _Observed(self, run.events)

    def fail(self, exc: VlmserveError) -> None:
        """The request failed before generating."""
        self._finish(exc.code, http_status=exc.status)

    def abandon(self, http_status: int) -> None:
        """The response is over (``http_status``: what was sent, 0 if nothing); a no-op unless
        nothing ended the request: the client went away, or a bug (500)."""
        if http_status >= 500:
            self._finish("internal_error", http_status=http_status)
        else:
            self._finish("aborted", http_status=http_status or 499)

    # -- called by _Observed -------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, Delta) and event.num_tokens:
            now = time.perf_counter()
            m = self._services.metrics
            if self._last_token_at is None:
                self._first_token_at = now
                m.ttft.labels(self._model).observe(now - self._arrived)
            else:
                m.itl.labels(self._model).observe(now - self._last_token_at)
            self._last_token_at = now
            self._completion_tokens += event.num_tokens
        elif isinstance(event, Finished):
            self._reason = event.reason.value
            self._usage = event.usage or self._usage

    def on_end(self, status: str, http_status: int = 200) -> None:
        self._finish(status, http_status=http_status)

    # -- the end, once ---------------------------------------------------------------------------

    def _finish(self, status: str, *, http_status: int = 200) -> None:
        if self.is_finished:
            return
        self.is_finished = True
        usage, completion = self._usage, self._completion_tokens
        self._admission.release(usage.prompt_tokens + completion, time.monotonic())
        self._state["prompt_tokens"] = usage.prompt_tokens
        self._state["completion_tokens"] = completion
        self._observe(status, http_status, usage, completion)
        self._services.ledger.record(
            UsageRow(
                time.time(),
                self._identity.id,
                self._identity.name,
                self._model,
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.image_tokens,
                usage.video_tokens,
                completion,
                status,
                str(self._state.get("trace_id", "")),
            )
        )

    def _observe(self, status: str, http_status: int, usage: PromptUsage, completion: int) -> None:
        m, model = self._services.metrics, self._model
        m.requests.labels(model, str(http_status)).inc()
        if status in ("ok", "aborted"):
            reason = "abort" if status == "aborted" else self._reason
            m.success.labels(model, reason).inc()
            m.e2e.labels(model).observe(time.perf_counter() - self._arrived)
        for kind, value in (
            ("prompt", usage.prompt_tokens),
            ("cached", usage.cached_tokens),
            ("image", usage.image_tokens),
            ("video", usage.video_tokens),
            ("completion", completion),
        ):
            if value:
                m.tokens[kind].labels(model).inc(value)


class _Observed:
    """The run's events, seen by the account on their way to ``assemble``."""

    def __init__(self, account: ChatAccount, events: AsyncIterator[Event]) -> None:
        self._account = account
        self._events = events

    def __aiter__(self) -> _Observed:
        return self

    async def __anext__(self) -> Event:
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            self._account.on_end("ok")
            raise
        except VlmserveError as exc:
            self._account.on_end(exc.code, exc.status)
            raise
        self._account.on_event(event)
        return event

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._account.on_end("aborted", 499)  # a no-op when it already ended


def _model_label(services: Services, requested: str) -> str:
    """The catalogue id (aliases folded), or "unknown": metric labels stay a bounded set."""
    try:
        return services.catalog.get(requested).id
    except ModelNotFoundError:
        return "unknown"


def _count_refusal(services: Services, model: str, exc: RateLimitError) -> None:
    limit = "quota" if isinstance(exc, QuotaExceededError) else exc.limit
    services.metrics.rate_limited.labels(limit).inc()
    services.metrics.requests.labels(model, "429").inc()
