"""``ProcessorCounter``: a model's processor and tokenizer without its weights.

The remote engine uses it to count tokens and to size images exactly as the local engine would:
counting goes through the same ``PromptPreparer`` (chat template + processor), and the image
budgets come from the same ``Family``. Nothing is downloaded: the files must be on this machine
(``engine/remote/processor.py`` finds them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from vlmserve.engine.local.families import Family, family_for
from vlmserve.engine.local.prompt import PromptPreparer
from vlmserve.engine.types import EngineHealth, Prompt, PromptUsage
from vlmserve.errors import OverloadedError

log = logging.getLogger(__name__)

State = Literal["idle", "loading", "ready", "failed", "closed"]


class ProcessorCounter:
    """Satisfies ``vlmserve.engine.remote.TokenCounter``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._state: State = "idle"
        self._detail = "processor not loaded"
        self._lock = threading.Lock()
        self._preparer: PromptPreparer | None = None
        self._image_edges: tuple[int, int] | None = None
        self._family: Family | None = None
        # One thread: HF fast tokenizers must not be used from two threads at once.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlmserve-count")

    async def start(self) -> None:
        with self._lock:
            if self._state != "idle":
                return
            self._state, self._detail = "loading", f"loading the processor of {self.directory}"
        threading.Thread(target=self._load, name="vlmserve-counter-load", daemon=True).start()

    async def close(self) -> None:
        with self._lock:
            self._state, self._detail = "closed", "closed"
            self._preparer = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def count(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> PromptUsage:
        preparer = self._preparer
        if preparer is None:
            raise OverloadedError(
                f"The token counter is not available ({self._detail}); retry in a moment.",
                code="model_loading",
            )
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._pool, preparer.prepare, prompt, tools)
        return prepared.usage

    async def media_tokens(self, prompt: Prompt) -> tuple[int, int]:
        preparer = self._preparer
        if preparer is not None:
            loop = asyncio.get_running_loop()
            known = await loop.run_in_executor(self._pool, preparer.media_tokens, prompt)
            if known is not None:
                return known
        usage = await self.count(prompt)
        return usage.image_tokens, usage.video_tokens

    def processor_kwargs(self, prompt: Prompt) -> dict[str, Any]:
        family = self._family
        if family is None:
            return {}
        sizes = [frame.size for item in prompt.media for frame in item.frames]
        return family.upstream_processor_kwargs(sizes)

    def health(self) -> EngineHealth:
        return EngineHealth(
            ready=self._state == "ready", detail=self._detail, image_edges=self._image_edges
        )

    def _load(self) -> None:
        try:
            preparer, family = load_preparer(self.directory)
            edges = family.image_edges()
        except Exception as exc:
            log.exception("failed to load the processor of %s", self.directory)
            with self._lock:
                if self._state == "loading":
                    self._state = "failed"
                    self._detail = (
                        f"failed to load the processor of {self.directory}: "
                        f"{type(exc).__name__}: {exc}"
                    )
            return
        with self._lock:
            if self._state != "loading":  # closed while loading
                return
            self._preparer, self._image_edges, self._family = preparer, edges, family
            self._state = "ready"
            self._detail = f"token counts from the processor of {self.directory}"
        log.info("%s", self._detail)


def load_preparer(directory: Path) -> tuple[PromptPreparer, Family]:
    """The processor and family of the model in ``directory``; reads files only."""
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    # Families read only ``model.config`` outside of generation.
    family = family_for(SimpleNamespace(config=config), processor)
    return PromptPreparer(processor, family), family
