"""Prometheus metrics (``GET /metrics``), named like vLLM's where the meaning is the same.

One ``CollectorRegistry`` per app (no process-wide default registry: two apps in one process,
as in tests, keep separate counts). Request metrics are observed as requests run; engine state
(running / waiting sequences, caches, replicas) is read from each engine's ``health()`` at scrape
time. ``docs/operations.md`` lists every metric with a Grafana query.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.client import EngineClient
from vlmserve.engine.remote.engine import RemoteEngine
from vlmserve.engine.types import EngineHealth, PromptCacheStats
from vlmserve.errors import MediaFetchError, PayloadTooLargeError, VlmserveError
from vlmserve.media.fetch import SafeFetcher
from vlmserve.media.intake import MediaIntake

# No ``*_created`` series beside every counter and histogram: nothing graphs them, and they
# double the exposition (vLLM turns them off too). prometheus-client only has a global switch.
disable_created_metrics()  # type: ignore[no-untyped-call]

P = "vlmserve:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Buckets: vLLM's, with finer steps below 50 ms (a small model on a GPU is that fast).
_TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25)
_TTFT_BUCKETS += (0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_ITL_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)
_ITL_BUCKETS += (0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5)
_E2E_BUCKETS += (5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0)
_INTAKE_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_INTAKE_BUCKETS += (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# EngineHealth field → (metric name, kind, help). Fields missing here are exported as
# ``vlmserve:engine_<field>`` gauges when they are numbers, so a field an engine adds shows up at
# once, and gets its vLLM name by one line here.
ENGINE_FIELDS: dict[str, tuple[str, str, str]] = {
    "num_running": ("num_requests_running", "gauge", "Sequences generating now."),
    "num_waiting": ("num_requests_waiting", "gauge", "Sequences queued, not yet prefilled."),
    "num_preempted": ("num_requests_preempted", "gauge", "Waiting sequences to be recomputed."),
    "num_preemptions": ("num_preemptions", "counter", "Sequences preempted since the start."),
    "kv_cache_usage": ("kv_cache_usage_perc", "gauge", "KV cache usage, 0-1 (1: full)."),
    "kv_cache_bytes": ("kv_cache_bytes", "gauge", "KV cache memory in use."),
    "kv_cache_max_bytes": ("kv_cache_max_bytes", "gauge", "KV cache memory budget."),
    "max_model_len": ("max_model_len", "gauge", "The bound model's own context window."),
}
_SKIPPED_FIELDS = {"ready", "detail", "image_edges", "prompt_cache", "video_frame_tokens"}
# PromptCacheStats field → (metric name, kind, help): the automatic prompt cache.
CACHE_FIELDS: dict[str, tuple[str, str, str]] = {
    "num_prompt_tokens": ("prefix_cache_queries", "counter", "Prompt tokens looked up."),
    "num_cached_tokens": ("prefix_cache_hits", "counter", "Prompt tokens served from the cache."),
    "num_requests": ("prefix_cache_requests", "counter", "Prefills that looked their prompt up."),
    "num_hit_requests": ("prefix_cache_hit_requests", "counter", "... that reused a block."),
    "num_blocks": ("prefix_cache_blocks", "gauge", "256-token KV blocks held."),
    "kv_bytes": ("prefix_cache_bytes", "gauge", "Memory the cached KV blocks hold."),
    "kv_max_bytes": ("prefix_cache_max_bytes", "gauge", "The prefix cache's budget."),
    "num_evicted_blocks": ("prefix_cache_evictions", "counter", "KV blocks evicted."),
    "num_encoder_hits": ("encoder_cache_hits", "counter", "Media whose features were cached."),
    "num_encoder_misses": ("encoder_cache_misses", "counter", "Media that ran the vision tower."),
    "encoder_bytes": ("encoder_cache_bytes", "gauge", "Memory the cached features hold."),
    "encoder_max_bytes": ("encoder_cache_max_bytes", "gauge", "The encoder cache's budget."),
    "num_evicted_encodings": ("encoder_cache_evictions", "counter", "Encodings evicted."),
}


class Metrics:
    """Every metric of one app; ``render`` reads the engines and returns the exposition text."""

    def __init__(self, engines: Mapping[EngineBinding, EngineClient]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        by_model = ["model"]
        self.requests = Counter(
            P + "requests", "Chat completion requests by HTTP status.", ["model", "status"],
            registry=r,
        )  # fmt: skip
        self.success = Counter(
            P + "request_success", "Chat completions finished, by finish reason.",
            ["model", "finished_reason"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            P + "rate_limited_requests", "Requests refused with 429, by limit.", ["limit"],
            registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            P + "time_to_first_token_seconds", "Arrival to the first generated token.",
            by_model, buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            P + "inter_token_latency_seconds", "Time between two streamed outputs.", by_model,
            buckets=_ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            P + "e2e_request_latency_seconds", "Arrival to the last token.", by_model,
            buckets=_E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue = Histogram(
            P + "request_queue_time_seconds",
            "Arrival until the engine reports the prompt accepted (media intake and waiting).",
            by_model, buckets=_E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = {
            kind: Counter(P + name, text, by_model, registry=r)
            for kind, name, text in (
                ("prompt", "prompt_tokens", "Prompt tokens billed (cached ones included)."),
                ("cached", "prompt_tokens_cached", "Prompt tokens served from the cache."),
                ("image", "prompt_tokens_image", "Prompt tokens of images."),
                ("video", "prompt_tokens_video", "Prompt tokens of video frames."),
                ("completion", "generation_tokens", "Generated tokens."),
            )
        }
        self.intake = Histogram(
            P + "media_intake_seconds", "Media of one request: fetch, decode, resize, hash.",
            ["kind"], buckets=_INTAKE_BUCKETS, registry=r,
        )  # fmt: skip
        self.fetches = Counter(
            P + "media_fetch", "Remote media fetches by outcome.", ["outcome"], registry=r
        )
        self.engines = EngineCollector(engines)
        r.register(self.engines)

    async def render(self) -> bytes:
        await self.engines.refresh()
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Engine state, read at scrape time (``refresh`` first: ``health()`` is async)."""

    def __init__(self, engines: Mapping[EngineBinding, EngineClient]) -> None:
        self._engines = engines
        self._healths: dict[str, EngineHealth] = {}

    async def refresh(self) -> None:
        self._healths = {b.model: await e.health() for b, e in self._engines.items()}

    def describe(self) -> Iterable[Metric]:
        return []  # names depend on what the engines report

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        ready = GaugeMetricFamily(P + "engine_ready", "1: the model is loaded.", labels=["model"])
        for model, health in self._healths.items():
            ready.add_metric([model], 1.0 if health.ready else 0.0)
            for name, kind, text, value in _engine_values(health):
                family = families.get(name)
                if family is None:
                    family = families[name] = _family(name, kind, text, ["model"])
                family.add_metric([model], value)
        yield ready
        yield from families.values()
        yield from _replica_metrics(self._engines)


def _engine_values(health: EngineHealth) -> Iterator[tuple[str, str, str, float]]:
    for f in dataclasses.fields(health):
        value = getattr(health, f.name)
        if f.name in _SKIPPED_FIELDS or not _is_number(value):
            continue
        name, kind, text = ENGINE_FIELDS.get(
            f.name, (f"engine_{f.name}", "gauge", f"EngineHealth.{f.name}")
        )
        yield P + name, kind, text, float(value)
    if health.prompt_cache is not None:
        yield from _cache_values(health.prompt_cache)


def _cache_values(stats: PromptCacheStats) -> Iterator[tuple[str, str, str, float]]:
    for f in dataclasses.fields(stats):
        name, kind, text = CACHE_FIELDS.get(
            f.name, (f"prompt_cache_{f.name}", "gauge", f"PromptCacheStats.{f.name}")
        )
        yield P + name, kind, text, float(getattr(stats, f.name))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _family(
    name: str, kind: str, text: str, labels: list[str]
) -> GaugeMetricFamily | CounterMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


def _replica_metrics(engines: Mapping[EngineBinding, EngineClient]) -> Iterator[Metric]:
    up = GaugeMetricFamily(P + "replica_up", "1: the replica passes health checks.",
                           labels=["model", "replica"])  # fmt: skip
    outstanding = GaugeMetricFamily(
        P + "replica_outstanding_requests", "Requests in flight to the replica.",
        labels=["model", "replica"],
    )  # fmt: skip
    sent = CounterMetricFamily(
        P + "replica_requests", "Requests sent to the replica.", labels=["model", "replica"]
    )
    latency = GaugeMetricFamily(
        P + "replica_health_check_seconds", "Latency of the replica's last health check.",
        labels=["model", "replica"],
    )  # fmt: skip
    found = False
    for binding, engine in engines.items():
        if not isinstance(engine, RemoteEngine):
            continue
        for replica in engine.pool.replicas:
            found = True
            labels = [binding.model, replica.url]
            up.add_metric(labels, 1.0 if replica.is_up else 0.0)
            outstanding.add_metric(labels, float(replica.num_outstanding))
            sent.add_metric(labels, float(replica.num_requests))
            if replica.health_latency_s is not None:
                latency.add_metric(labels, replica.health_latency_s)
    if found:
        yield from (up, outstanding, sent, latency)


class ObservedFetcher(SafeFetcher):
    """``SafeFetcher`` that counts outcomes: ok, refused (permanent), retryable, too_large."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def fetch(self, *args: Any, **kwargs: Any) -> bytes:
        try:
            data = await super().fetch(*args, **kwargs)
        except MediaFetchError as exc:
            self._metrics.fetches.labels("retryable" if exc.retryable else "refused").inc()
            raise
        except PayloadTooLargeError:
            self._metrics.fetches.labels("too_large").inc()
            raise
        except VlmserveError:
            self._metrics.fetches.labels("refused").inc()
            raise
        self._metrics.fetches.labels("ok").inc()
        return data


class ObservedIntake(MediaIntake):
    """``MediaIntake`` that times each request's media."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def prepare_images(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().prepare_images(*args, **kwargs)
        finally:
            self._metrics.intake.labels("images").observe(time.perf_counter() - started)

    async def prepare_media(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().prepare_media(*args, **kwargs)
        finally:
            self._metrics.intake.labels("media").observe(time.perf_counter() - started)
