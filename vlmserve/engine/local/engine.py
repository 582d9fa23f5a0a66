"""``LocalEngine``: the async ``EngineClient`` over an embedded transformers model.

The event loop never runs model code: loading runs in a background thread; prompt preparation
(chat template + processor) runs in its own single-threaded pool (prep_pool.py) beside the step
thread of ``EngineCore``, which runs the model (see core.py). Events come back through an
asyncio queue fed with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any, Literal

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.local.core import EngineCore
from vlmserve.engine.local.grammar import GrammarProcessor, Grammars, grammar_spec, uses_tools
from vlmserve.engine.local.loader import LoadedModel, load_model
from vlmserve.engine.local.model_runner import ModelRunner, default_kv_bytes
from vlmserve.engine.local.prefix_cache import PrefixCache
from vlmserve.engine.local.prep_pool import prep_pool
from vlmserve.engine.local.prompt import PreparedPrompt, PromptPreparer
from vlmserve.engine.local.scheduler import Scheduler
from vlmserve.engine.local.sequence import Item, Sequence
from vlmserve.engine.types import (
    EngineHealth,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    Prompt,
    PromptUsage,
    SamplingParams,
    Started,
)
from vlmserve.errors import (
    ContextLengthError,
    InvalidRequestError,
    OverloadedError,
    VlmserveError,
)
from vlmserve.settings import EngineSettings

log = logging.getLogger(__name__)

State = Literal["idle", "loading", "ready", "failed", "closed"]


class LocalEngine:
    def __init__(
        self, binding: EngineBinding, settings: EngineSettings, *, max_num_seqs: int | None = None
    ) -> None:
        self.binding = binding
        self.settings = settings
        self.max_num_seqs = max_num_seqs or settings.max_num_seqs
        self._state: State = "idle"
        self._detail = "not started"
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self._core: EngineCore | None = None
        self._preparer: PromptPreparer | None = None
        self._grammars: Grammars | None = None
        self._num_preparing = 0
        self._preparing_ids: dict[str, int] = {}  # request id → how many are being prepared
        self._early_aborts: set[str] = set()  # aborted while being prepared
        self._kv_max_bytes = 0
        self._pool = prep_pool()

    async def start(self) -> None:
        with self._lock:
            if self._state != "idle":
                return
            self._state, self._detail = "loading", f"loading {self.binding.model}"
        threading.Thread(target=self._load, name="vlmserve-engine-load", daemon=True).start()

    async def close(self) -> None:
        with self._lock:
            if self._state == "closed":
                return
            self._state, self._detail = "closed", "closed"
            core, self._core, self._loaded, self._preparer = self._core, None, None, None
        self._pool.shutdown(wait=False, cancel_futures=True)
        if core is not None:
            await asyncio.to_thread(core.close)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        # Errors raise from the first ``__anext__``, before any event.
        core, loaded = self._ready()
        if self._num_preparing + core.num_waiting >= self.settings.max_queue:
            raise _queue_full(self.settings.max_queue)
        _check_sampling(request.sampling)
        grammar = await self._grammar(request, core)  # a schema it cannot compile fails first
        prepared, aborted = await self._prepare_request(request)
        if core.num_waiting >= self.settings.max_queue:  # it filled while this one was prepared
            raise _queue_full(self.settings.max_queue)
        max_new_tokens = _budget(prepared, request, loaded.max_model_len)
        if aborted:
            yield Started(prepared.usage)
            for index in range(request.sampling.n):
                yield Finished(index, FinishReason.ABORT)
            return
        channel = _Channel(asyncio.get_running_loop())
        tool_format = self._preparer.tool_format if self._preparer and uses_tools(request) else None
        seq = Sequence(
            request, prepared, max_new_tokens, loaded.tokenizer, channel.sink, tool_format
        )
        if grammar is not None:
            seq.logits_processors.append(grammar)
        core.submit(seq)
        done = False
        try:
            while (item := await channel.get()) is not None:
                if isinstance(item, VlmserveError):
                    done = True
                    raise item
                yield item
            done = True
        finally:
            if not done:  # the consumer went away (client disconnect) or was cancelled
                core.abort(seq)

    async def abort(self, request_id: str) -> None:
        if request_id in self._preparing_ids:
            self._early_aborts.add(request_id)
        core = self._core
        if core is not None:
            core.abort(request_id)

    async def count_tokens(
        self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()
    ) -> PromptUsage:
        self._ready()
        return (await self._prepare(prompt, tools)).usage

    async def health(self) -> EngineHealth:
        loaded = self._loaded
        if loaded is None:
            return EngineHealth(ready=False, detail=self._detail)
        core = self._core
        scheduler = core.scheduler if core else None
        kv_bytes = core.runner.kv_bytes() if core else 0
        return EngineHealth(
            ready=self._state == "ready",
            detail=self._detail,
            max_model_len=loaded.max_model_len,
            image_edges=loaded.family.image_edges(),
            video_frame_tokens=loaded.family.video_frame_tokens(),
            num_running=len(scheduler.running) if scheduler else 0,
            num_waiting=core.num_waiting + self._num_preparing if core else 0,
            num_preempted=scheduler.num_preempted if scheduler else 0,
            num_preemptions=scheduler.num_preemptions if scheduler else 0,
            kv_cache_bytes=kv_bytes,
            kv_cache_max_bytes=self._kv_max_bytes,
            kv_cache_usage=kv_bytes / self._kv_max_bytes if self._kv_max_bytes else 0.0,
            prompt_cache=core.runner.prompt_cache_stats() if core else None,
        )

    def _ready(self) -> tuple[EngineCore, LoadedModel]:
        core, loaded = self._core, self._loaded
        if self._state == "ready" and core is not None and loaded is not None:
            return core, loaded
        if self._state == "loading":
            raise OverloadedError(
                f"The model is loading ({self.binding.model}); retry in a moment.",
                code="model_loading",
            )
        raise OverloadedError(f"The model is not available: {self._detail}")

    async def _prepare_request(self, request: GenerationRequest) -> tuple[PreparedPrompt, bool]:
        """The prepared prompt, and whether ``abort`` named the request meanwhile."""
        rid = request.request_id
        self._preparing_ids[rid] = self._preparing_ids.get(rid, 0) + 1
        try:
            prepared = await self._prepare(request.prompt, request.tools or ())
        finally:
            self._preparing_ids[rid] -= 1
            if not self._preparing_ids[rid]:
                del self._preparing_ids[rid]
                aborted = rid in self._early_aborts
                self._early_aborts.discard(rid)
        return prepared, aborted

    async def _prepare(
        self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()
    ) -> PreparedPrompt:
        preparer, core = self._preparer, self._core
        if preparer is None or core is None:
            raise OverloadedError(f"The model is not available: {self._detail}")
        self._num_preparing += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, preparer.prepare, prompt, tools)
        finally:
            self._num_preparing -= 1

    async def _grammar(
        self, request: GenerationRequest, core: EngineCore
    ) -> GrammarProcessor | None:
        """The request's grammar (compiled off the step thread, cached), or None: free text."""
        grammars, preparer = self._grammars, self._preparer
        if grammars is None or preparer is None:
            raise OverloadedError(f"The model is not available: {self._detail}")
        spec = grammar_spec(request, preparer.tool_format)
        if spec is None:
            return None
        if not grammars.is_prepared:  # reads the HF tokenizer: the step thread's job
            await asyncio.wrap_future(core.call(grammars.prepare))
        compiled = await asyncio.to_thread(grammars.compile, spec)
        return GrammarProcessor(compiled, request.sampling.n, grammars.vocab_size)

    def _load(self) -> None:
        try:
            loaded = load_model(self.binding, self.settings)
            # Its own processor: HF fast tokenizers must not be used from two threads at once
            # (the step thread detokenizes with the model's).
            preparer = PromptPreparer(copy.deepcopy(loaded.processor), loaded.family)
            grammars = Grammars(loaded.tokenizer, _vocab_size(loaded), loaded.eos_token_ids)
            runner = ModelRunner(
                loaded,
                self._prefix_cache(loaded),
                direct_decode=self.settings.direct_decode,
                vision_slice_s=self.settings.vision_slice_s,
            )
            kv_bytes = self.settings.kv_cache_bytes or default_kv_bytes(loaded.device)
            scheduler = Scheduler(
                self.max_num_seqs,
                self.settings.max_num_batched_tokens,
                kv_bytes // runner.kv_bytes_per_token,
            )
            core = EngineCore(runner, scheduler)
            self._kv_max_bytes = kv_bytes
        except Exception as exc:
            log.exception("failed to load %s", self.binding.model)
            with self._lock:
                if self._state == "loading":
                    self._state = "failed"
                    self._detail = (
                        f"failed to load {self.binding.model}: {type(exc).__name__}: {exc}"
                    )
            return
        with self._lock:
            if self._state != "loading":  # closed while loading
                return
            self._loaded, self._preparer, self._core = loaded, preparer, core
            self._grammars = grammars
            core.start()
            self._state = "ready"
            self._detail = f"{self.binding.model} ready on {loaded.device} ({loaded.dtype})"
        log.info("%s", self._detail)

    def _prefix_cache(self, loaded: LoadedModel) -> PrefixCache | None:
        if not self.settings.prompt_cache:
            return None
        return PrefixCache(
            loaded.model, loaded.family, loaded.processor, self.settings, self.binding.model
        )


class _Poster:
    """Hands items from the step thread to one event loop's channels with one wake-up for all
    that arrive before the loop runs (a step of 16 streams would otherwise wake it 16 times)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[_Channel, list[Item]]] = []

    def post(self, channel: _Channel, items: list[Item]) -> None:
        with self._lock:
            self._pending.append((channel, items))
            if len(self._pending) > 1:  # a wake-up is already on its way
                return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for channel, items in pending:
            channel.put_all(items)


_posters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poster] = (
    weakref.WeakKeyDictionary()
)


class _Channel:
    """Items from the step thread to one generate() call on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        poster = _posters.get(loop)
        if poster is None:
            poster = _posters[loop] = _Poster(loop)
        self._poster = poster
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def sink(self, items: list[Item]) -> None:
        """Called on the step thread."""
        self._poster.post(self, items)

    async def get(self) -> Item:
        return await self._queue.get()

    def put_all(self, items: list[Item]) -> None:
        for item in items:
            self._queue.put_nowait(item)


def _vocab_size(loaded: LoadedModel) -> int:
    """The width of the model's logits (the grammar's token masks are as wide)."""
    return int(loaded.model.config.get_text_config(decoder=True).vocab_size)


def _queue_full(max_queue: int) -> OverloadedError:
    error = OverloadedError(f"The engine has {max_queue} requests waiting; retry later.")
    error.retry_after_s = 1.0
    return error


def _check_sampling(params: SamplingParams) -> None:
    if params.n < 1:
        raise InvalidRequestError("n must be at least 1.", param="n")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise InvalidRequestError("max_tokens must be at least 1.", param="max_tokens")
    if params.temperature < 0:
        raise InvalidRequestError("temperature must not be negative.", param="temperature")
    if not 0 <= params.top_p <= 1:
        raise InvalidRequestError("top_p must be between 0 and 1.", param="top_p")


def _budget(prepared: PreparedPrompt, request: GenerationRequest, max_model_len: int) -> int:
    """How many tokens may be generated: max_tokens capped by what the context window leaves."""
    window = max_model_len
    if request.context_window is not None:
        window = min(window, request.context_window)
    room = window - prepared.num_tokens
    if room < 1:
        raise ContextLengthError(
            f"This prompt is {prepared.num_tokens} tokens long but the model's context window is "
            f"{window} tokens, which leaves no room for an answer; shorten the conversation or "
            "send fewer or smaller images.",
            param="messages",
        )
    max_tokens = request.sampling.max_tokens
    return room if max_tokens is None else min(max_tokens, room)
