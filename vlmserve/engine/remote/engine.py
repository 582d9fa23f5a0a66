"""``RemoteEngine``: the ``EngineClient`` over HTTP to OpenAI-compatible replicas.

One pooled ``httpx.AsyncClient`` (HTTP/1.1 keep-alive) serves every replica. A request is routed
(``router``), sent as a streaming chat completion (``payload``), and the upstream's chunks are
re-emitted as our events (``stream``). A replica that fails before anything was streamed is
replaced once by another (``RemoteEngineSettings.retries``); after the first event, failures
surface as errors, because the client already holds part of an answer.

Prompt usage (``Started``) comes, in this order of preference, from
1. the upstream's usage on its first chunk (we ask for ``continuous_usage_stats``: vLLM and SGLang
   report the exact prompt tokens there, before any text);
2. the ``token_counter`` given at construction (the model's own processor, loaded locally:
   ``engine/local/counter.py``);
3. the upstream's final usage: the events are then held back until the stream ends, because a
   wrong count would be billed; an upstream that reports no usage at all fails the request.
``cached_tokens`` is usually known only at the end (vLLM reports it in its last chunk): the last
``Finished`` carries the final ``PromptUsage``, which supersedes ``Started.usage``.

``count_tokens`` uses the ``token_counter`` when there is one, else asks a replica: vLLM's
``/tokenize`` (at the server root) or the Step API's ``/v1/token/count`` (another vlmserve); an
upstream with neither gets a clear 400 that says how to fix it.

The ``token_counter`` also supplies the image budgets (``EngineHealth.image_edges``) that media
sizes pictures to before they are sent, so a replica receives what the local engine would have
processed; without one, pictures travel at the size the catalogue's limits allowed and the
replica's processor sizes them. While it loads, the engine is not ready and refuses requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote import router
from vlmserve.engine.remote.envelope import uses_envelope
from vlmserve.engine.remote.failures import (
    can_fail_over,
    error_for_status,
    is_unreachable,
    map_upstream_errors,
    upstream_message,
)
from vlmserve.engine.remote.payload import (
    INLINE_ENCODE_PIXELS,
    ImageEncoder,
    build_payload,
    probe_payload,
    to_json_bytes,
    tokenize_payload,
)
from vlmserve.engine.remote.pool import Replica, ReplicaPool
from vlmserve.engine.remote.probe import (
    mismatch_message,
    probe_prompt,
    probe_size,
    refused_message,
)
from vlmserve.engine.remote.stream import (
    DONE,
    StreamState,
    parse_chunk,
    prompt_usage_of,
    sse_data,
)
from vlmserve.engine.types import (
    EngineHealth,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    Prompt,
    PromptUsage,
    Started,
)
from vlmserve.errors import (
    ContextLengthError,
    NotSupportedYetError,
    OverloadedError,
    UpstreamError,
    VlmserveError,
)
from vlmserve.settings import RemoteEngineSettings

log = logging.getLogger("vlmserve.engine.remote")


class TokenCounter(Protocol):
    """Counts prompts as the bound model's own processor does, on this machine (no weights)."""

    async def start(self) -> None:
        """Begin loading the processor in the background; returns at once. Idempotent."""

    async def close(self) -> None:
        """Free the processor. Idempotent."""

    async def count(self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()) -> PromptUsage:
        """What the local engine would report for ``prompt`` with ``tools`` in it;
        ``OverloadedError`` until loaded."""
        ...

    def health(self) -> EngineHealth:
        """Cheap, never raises: ready once loaded, with the model's ``image_edges``."""
        ...

    async def media_tokens(self, prompt: Prompt) -> tuple[int, int]:
        """The (image, video) tokens ``count`` would report for ``prompt``; cheap for pictures
        of sizes seen before (no pixel work). ``OverloadedError`` until loaded."""
        ...

    def processor_kwargs(self, prompt: Prompt) -> dict[str, Any]:
        """``mm_processor_kwargs`` under which a vLLM replica sizes and tiles ``prompt``'s
        pictures as ``count`` did (SmolVLM: ``size``); {} when none are needed or not loaded.
        Cheap (no pixels are touched)."""
        ...


_JSON = {"content-type": "application/json"}


@dataclass(slots=True)
class _Attempt:
    """One try of one request on one replica."""

    replica: Replica
    response: httpx.Response | None = None
    has_yielded: bool = False


class RemoteEngine:
    def __init__(
        self,
        binding: EngineBinding,
        settings: RemoteEngineSettings,
        *,
        token_counter: TokenCounter | None = None,
    ) -> None:
        if binding.kind != "remote" or not binding.upstreams:
            raise ValueError("a remote engine needs a binding with kind='remote' and upstreams")
        self.model = binding.upstream_model or binding.model
        self.settings = settings
        self.pool = ReplicaPool(binding.upstreams, self.model, settings.health_timeout_s)
        self._ring = router.HashRing([r.url for r in self.pool.replicas], settings.virtual_nodes)
        # Parsed once: httpx parses a URL string again on every request.
        self._chat_urls = {
            r.url: httpx.URL(f"{r.url}/chat/completions") for r in self.pool.replicas
        }
        self._turns = itertools.count()
        self._encoder = ImageEncoder(
            settings.image_encoding, settings.jpeg_quality, settings.encode_cache_bytes
        )
        self._token_counter = token_counter
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._running: dict[str, _Attempt] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._aborted: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        s = self.settings
        headers = {"authorization": f"Bearer {s.api_key}"} if s.api_key else None
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=s.max_connections,
                max_keepalive_connections=s.max_keepalive_connections,
            ),
        )
        self._health_task = asyncio.create_task(self._run_checks(self._client))
        if self._token_counter is not None:
            await self._token_counter.start()

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for request_id in list(self._running):
            await self.abort(request_id)
        readers = list(self._readers)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._token_counter is not None:
            await self._token_counter.close()

    async def _run_checks(self, client: httpx.AsyncClient) -> None:
        """Health checks every ``health_interval_s``, each followed by the count check of the
        replicas that came up (``probe.py``), until cancelled."""
        while True:
            await self.pool.check_all(client)
            await self.verify_counts(client)
            counter = self._token_counter
            if counter is not None and not counter.health().ready:
                await asyncio.sleep(min(0.5, self.settings.health_interval_s))  # loading
            else:
                await asyncio.sleep(self.settings.health_interval_s)

    async def verify_counts(self, client: httpx.AsyncClient) -> None:
        counter = self._token_counter
        if counter is None:  # the replicas' counts are the only counts: nothing to compare
            for replica in self.pool.replicas:
                replica.is_verified = True
            return
        if not counter.health().ready:
            return
        pending = [r for r in self.pool.replicas if r.is_up and not r.is_verified]
        results = await asyncio.gather(
            *(self._verify(client, counter, r) for r in pending), return_exceptions=True
        )
        for replica, result in zip(pending, results, strict=True):
            if isinstance(result, Exception):  # never let one check end the health loop
                log.warning("count check of %s failed: %r", replica.url, result)

    async def _verify(
        self, client: httpx.AsyncClient, counter: TokenCounter, replica: Replica
    ) -> None:
        edges = counter.health().image_edges
        prompt = await asyncio.to_thread(probe_prompt, edges)
        kwargs = counter.processor_kwargs(prompt)
        counted = (await counter.count(prompt)).prompt_tokens
        body = to_json_bytes(probe_payload(prompt, self.model, self._encoder, kwargs))
        try:
            with self.pool.track(replica), map_upstream_errors(replica.url):
                response = await client.post(
                    self._chat_urls[replica.url], content=body, headers=_JSON
                )
                raw = await response.aread()
        except VlmserveError as exc:
            self.pool.mark_down(replica, f"count check failed: {exc.message}")
            return
        problem = self._probe_problem(replica, response.status_code, raw, counted, edges, kwargs)
        if problem is None:
            replica.is_verified = True
            log.info("replica %s bills what vlmserve counts (%d tokens)", replica.url, counted)
        else:
            self.pool.mark_down(replica, problem)

    def _probe_problem(
        self,
        replica: Replica,
        status: int,
        raw: bytes,
        counted: int,
        edges: tuple[int, int] | None,
        kwargs: dict[str, Any],
    ) -> str | None:
        if status != 200:
            message, _ = upstream_message(raw)
            if kwargs and "mm_processor_kwargs" in message:
                return refused_message(replica.url, message, kwargs)
            return f"count check failed: {replica.url} answered {status}: {message}"
        try:
            usage = json.loads(raw).get("usage") or {}
        except (ValueError, AttributeError):
            usage = {}
        billed = prompt_usage_of(usage) if isinstance(usage, dict) else None
        if billed is None:
            return None  # no usage to compare: the stream's usage will be the bill
        if billed.prompt_tokens != counted:
            size = probe_size(edges)
            return mismatch_message(replica.url, counted, billed.prompt_tokens, size, kwargs)
        return None

    async def health(self) -> EngineHealth:
        if self._client is None:
            return EngineHealth(False, "remote engine not started")
        ready = any(r.is_up for r in self.pool.replicas)
        detail = self.pool.summary()
        if self._token_counter is None:
            return EngineHealth(ready, detail, max_model_len=self.pool.max_model_len())
        counter = self._token_counter.health()
        ready = any(r.is_up and r.is_verified for r in self.pool.replicas)
        return EngineHealth(
            ready and counter.ready,
            f"{detail}; {counter.detail}",
            max_model_len=self.pool.max_model_len(),
            image_edges=counter.image_edges,
        )

    # -- generation ------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self._require_client()
        self._require_counter()
        # The upstream is read by a task of its own. A consumer that goes away (a client
        # disconnect) may be cancelled again and again while it unwinds; httpx's clean-up cut
        # short that way leaves the upstream connection open, a pool slot taken, and the replica
        # generating for nobody. The reader is cancelled exactly once and closes the stream.
        items: asyncio.Queue[Event | Exception | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request, items))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        try:
            while (item := await items.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            reader.cancel()  # nothing to do when it has finished

    async def _read(
        self, request: GenerationRequest, items: asyncio.Queue[Event | Exception | None]
    ) -> None:
        try:
            async with aclosing(self._generate(request)) as events:
                async for event in events:
                    items.put_nowait(event)
        except Exception as exc:  # handed to the consumer, which raises it
            items.put_nowait(exc)
        else:
            items.put_nowait(None)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        client = self._require_client()
        body = await self._encode(request)
        key = router.conversation_key(request, self.model, self.settings.routing_images)
        tried: list[Replica] = []
        error: VlmserveError | None = None
        while len(tried) <= self.settings.retries:
            replica = self.choose(key, exclude=tried)
            if replica is None:
                break
            tried.append(replica)
            attempt = _Attempt(replica)
            try:
                async with aclosing(self._attempt(client, request, body, attempt)) as events:
                    async for event in events:
                        attempt.has_yielded = True
                        yield event
                return
            except VlmserveError as exc:
                if is_unreachable(exc):
                    self.pool.mark_down(replica, exc.message)
                if attempt.has_yielded or not can_fail_over(exc):
                    raise
                log.warning("request %s failed on %s: %s", request.request_id, replica.url, exc)
                error = exc
            finally:
                self._aborted.discard(request.request_id)
        raise error or UpstreamError(f"No replica of model {self.model} could take the request.")

    async def _attempt(
        self, client: httpx.AsyncClient, request: GenerationRequest, body: bytes, attempt: _Attempt
    ) -> AsyncGenerator[Event, None]:
        url = self._chat_urls[attempt.replica.url]
        with self.pool.track(attempt.replica), map_upstream_errors(attempt.replica.url):
            async with client.stream("POST", url, content=body, headers=_JSON) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    raise error_for_status(
                        response.status_code, raw, response.headers, attempt.replica.url
                    )
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(
                        f"The model server {attempt.replica.url} answered without streaming "
                        f"({response.headers.get('content-type', 'no content type')})."
                    )
                attempt.response = response
                self._running[request.request_id] = attempt
                try:
                    async with aclosing(self._events(request, attempt)) as events:
                        async for event in events:
                            yield event
                finally:
                    self._running.pop(request.request_id, None)

    async def _events(
        self, request: GenerationRequest, attempt: _Attempt
    ) -> AsyncGenerator[Event, None]:
        assert attempt.response is not None
        state = StreamState(request.sampling.n, attempt.replica.url, uses_envelope(request))
        held: list[Event] = []  # deltas waiting for the prompt usage
        started = False
        try:
            lines = attempt.response.aiter_lines()
            async for data in sse_data(lines):
                if data == DONE:
                    await finish_body(lines)
                    break
                held.extend(state.feed(parse_chunk(data, attempt.replica.url)))
                if not started:
                    usage = await self._prompt_usage(request, state)
                    if usage is None:
                        continue
                    yield self._started(request, usage, state)
                    started = True
                for event in held:
                    yield event
                held.clear()
                if state.is_cut_short:
                    break
        except (httpx.HTTPError, httpx.StreamError):
            if request.request_id not in self._aborted:
                raise
            for i, reason in enumerate(state.reasons):
                if reason is None:
                    yield Finished(i, FinishReason.ABORT)
            return
        if not started:
            if state.prompt_usage is None:
                raise UpstreamError(
                    f"The model server {attempt.replica.url} reported no token usage; run a server "
                    "that honours stream_options.include_usage, or give vlmserve the model's "
                    "processor files so it can count tokens itself."
                )
            yield self._started(request, state.prompt_usage, state)
        state.prompt_usage = await self._prompt_usage(request, state)
        for event in [*held, *state.finish()]:
            yield event

    def _started(self, request: GenerationRequest, usage: PromptUsage, state: StreamState) -> Event:
        """``Started``, after checking the prompt against the catalogue's context window."""
        window = request.context_window
        if window is not None:
            room = window - usage.prompt_tokens
            if room <= 0:
                raise ContextLengthError(
                    f"The prompt has {usage.prompt_tokens} tokens (images included) but the "
                    f"model's context window is {window} tokens, which leaves no room for an "
                    "answer; shorten the conversation or send fewer or smaller images.",
                    param="messages",
                )
            state.budget = room
        return Started(usage)

    async def _prompt_usage(
        self, request: GenerationRequest, state: StreamState
    ) -> PromptUsage | None:
        """The replica's prompt usage, else our own count; image and video tokens from our own
        count when the replica reported no per-modality breakdown."""
        usage = state.prompt_usage
        if usage is None:
            return await self._count_locally(request)
        if state.has_modalities or not request.prompt.media or self._token_counter is None:
            return usage
        if state.own_modalities is None:  # counted once per request
            state.own_modalities = await self._token_counter.media_tokens(request.prompt)
        image_tokens, video_tokens = state.own_modalities
        usage = replace(usage, image_tokens=image_tokens, video_tokens=video_tokens)
        state.prompt_usage = usage
        return usage

    def _processor_kwargs(self, prompt: Prompt) -> dict[str, Any]:
        counter = self._token_counter
        return {} if counter is None or not prompt.media else counter.processor_kwargs(prompt)

    async def _count_locally(self, request: GenerationRequest) -> PromptUsage | None:
        if self._token_counter is None:
            return None
        return await self._token_counter.count(request.prompt, request.tools or ())

    async def _encode(self, request: GenerationRequest) -> bytes:
        def encode() -> bytes:
            payload = build_payload(
                request,
                self.model,
                self._encoder,
                self.settings.continuous_usage,
                self._processor_kwargs(request.prompt),
            )
            return to_json_bytes(payload)

        # Encoding big new pictures is CPU work for a worker thread. Pictures seen before (every
        # later turn of a conversation) cost a lookup, and small ones less than the thread hop.
        if self._encoder.num_pending_pixels(request.prompt.media) <= INLINE_ENCODE_PIXELS:
            return encode()
        return await asyncio.to_thread(encode)

    # -- routing ---------------------------------------------------------------------------

    def choose(self, key: bytes, exclude: list[Replica] | None = None) -> Replica | None:
        """The replica for a request with routing ``key``; None when every one was excluded."""
        replicas = self.pool.replicas
        allowed = [r not in (exclude or ()) for r in replicas]
        if not any(allowed):
            return None
        available = [a and r.is_up for a, r in zip(allowed, replicas, strict=True)]
        verified = [a and r.is_verified for a, r in zip(available, replicas, strict=True)]
        if any(verified):
            available = verified
        if not any(available):
            available = allowed  # health may be stale: a request is a probe, too
        loads = [r.num_outstanding for r in replicas]
        live = [i for i, ok in enumerate(available) if ok]
        policy = self.settings.routing
        if policy == "round_robin":
            index = router.round_robin(live, next(self._turns))
        elif policy == "least_outstanding":
            index = router.least_outstanding(live, loads)
        else:
            preference = self._ring.preference(key)
            index = router.choose_bounded(preference, loads, available, self.settings.load_factor)
        return replicas[index]

    # -- abort and token counting ----------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        attempt = self._running.get(request_id)
        if attempt is None or attempt.response is None:
            return
        self._aborted.add(request_id)
        await attempt.response.aclose()

    async def count_tokens(
        self, prompt: Prompt, tools: tuple[dict[str, Any], ...] = ()
    ) -> PromptUsage:
        if self._token_counter is not None:
            self._require_client()
            return await self._token_counter.count(prompt, tools)
        client = self._require_client()
        body = await asyncio.to_thread(
            lambda: to_json_bytes(tokenize_payload(prompt, self.model, self._encoder, tools))
        )
        key = router.conversation_key(
            GenerationRequest("count", prompt), self.model, self.settings.routing_images
        )
        tried: list[Replica] = []
        error: VlmserveError | None = None
        while len(tried) <= self.settings.retries:
            replica = self.choose(key, exclude=tried)
            if replica is None:
                break
            tried.append(replica)
            try:
                return await self._tokenize(client, replica, body)
            except VlmserveError as exc:
                if is_unreachable(exc):
                    self.pool.mark_down(replica, exc.message)
                if not can_fail_over(exc):
                    raise
                error = exc
        raise error or UpstreamError(f"No replica of model {self.model} could count tokens.")

    async def _tokenize(
        self, client: httpx.AsyncClient, replica: Replica, body: bytes
    ) -> PromptUsage:
        """vLLM's ``/tokenize`` at the server root, else the Step API's ``/v1/token/count``."""
        for url in (f"{server_root(replica.url)}/tokenize", f"{replica.url}/token/count"):
            with self.pool.track(replica), map_upstream_errors(replica.url):
                response = await client.post(url, content=body, headers=_JSON)
                raw = await response.aread()
            if response.status_code in (404, 405):
                continue
            if response.status_code != 200:
                raise error_for_status(response.status_code, raw, response.headers, replica.url)
            count = _count_of(raw)
            if count is None:
                raise UpstreamError(f"The model server {replica.url} answered {url} with no count.")
            return PromptUsage(prompt_tokens=count)
        raise NotSupportedYetError(
            f"Token counting is not available for model {self.model}: its model server has "
            "neither /tokenize (vLLM) nor /v1/token/count (vlmserve). Serve it with one of "
            "those, or give vlmserve the model's processor files so it counts tokens itself.",
            code="token_count_unavailable",
        )

    def _require_counter(self) -> None:
        """Refuse work while the processor loads: images would be sized without its budgets."""
        if self._token_counter is None:
            return
        counter = self._token_counter.health()
        if not counter.ready:
            raise OverloadedError(
                f"The remote engine for {self.model} is not ready: {counter.detail}.",
                code="model_loading",
            )

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise OverloadedError(
                f"The remote engine for {self.model} is not started yet; retry shortly.",
                code="model_loading",
            )
        return self._client


async def finish_body(lines: AsyncIterator[str], timeout_s: float = 1.0) -> None:
    """Read what follows ``[DONE]`` (a chunked body's last, empty chunk): a response read to its
    end gives its connection back to the pool; one left unread costs a new connection."""
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            async for _ in lines:
                pass


def _count_of(raw: bytes) -> int | None:
    """``{"count": N}`` (vLLM) or ``{"data": {"total_tokens": N}}`` (the Step API)."""
    try:
        body = json.loads(raw)
        count = body.get("count", (body.get("data") or {}).get("total_tokens"))
    except (ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def server_root(base_url: str) -> str:
    """``http://h:8000/v1`` → ``http://h:8000`` (vLLM serves /tokenize and /health there)."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
