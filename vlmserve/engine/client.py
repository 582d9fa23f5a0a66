"""The seam between ``serving`` and whatever generates text (local or remote engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from vlmserve.engine.types import EngineHealth, Event, GenerationRequest, Prompt, PromptUsage


class EngineClient(Protocol):
    async def start(self) -> None:
        """Begin loading the model in the background; returns at once. Idempotent."""

    async def close(self) -> None:
        """Stop accepting work, abort what runs, free the model. Idempotent."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield ``Started`` once, then ``Delta``s and one ``Finished`` per choice (``sampling.n``).

        Raises ``OverloadedError`` while the model is loading, ``ContextLengthError`` when the
        prompt leaves no room to generate. Closing the iterator early (client disconnect) aborts
        the generation within one decoding step and frees its resources.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Abort a running or queued request; unknown ids are ignored."""

    async def count_tokens(
        self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()
    ) -> PromptUsage:
        """Exactly the ``PromptUsage`` (minus ``cached_tokens``) that ``generate`` would report
        for a request with this prompt and these ``tools`` (``GenerationRequest.tools``)."""
        ...

    async def health(self) -> EngineHealth:
        """Cheap; never raises."""
        ...
