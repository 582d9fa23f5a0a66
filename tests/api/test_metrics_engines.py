"""Engine state in /metrics: every EngineHealth number exported (vLLM names where they exist),
the prompt cache's counters, remote replicas' health and latency."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeEngine
from vlmserve.api.metrics import Metrics
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.remote.engine import RemoteEngine
from vlmserve.engine.types import EngineHealth, PromptCacheStats
from vlmserve.settings import RemoteEngineSettings


class CachingEngine(FakeEngine):
    async def health(self) -> EngineHealth:
        stats = PromptCacheStats(
            num_requests=4, num_hit_requests=1, num_prompt_tokens=1024, num_cached_tokens=256,
            kv_bytes=1000, kv_max_bytes=4000, num_encoder_hits=3, num_encoder_misses=1,
        )  # fmt: skip
        return EngineHealth(
            True, "ready", 4096, num_running=2, num_waiting=5, num_preempted=1,
            num_preemptions=7, prompt_cache=stats,
        )  # fmt: skip


def _scrape(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    asyncio.run(metrics.engines.refresh())
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_every_engine_field_is_its_own_series_so_scrapers_do_not_reject_duplicates() -> None:
    metrics = Metrics({EngineBinding(model="m"): CachingEngine()})
    asyncio.run(metrics.engines.refresh())
    seen: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        seen += [(s.name, tuple(sorted(s.labels.items()))) for s in family.samples]
    assert len(seen) == len(set(seen))
    s = _scrape(metrics)
    assert s["vlmserve:num_requests_preempted"][(("model", "m"),)] == 1
    assert s["vlmserve:num_preemptions_total"][(("model", "m"),)] == 7


def test_engine_health_and_prompt_cache_numbers_are_exported() -> None:
    s = _scrape(Metrics({EngineBinding(model="m"): CachingEngine()}))
    model = (("model", "m"),)
    assert s["vlmserve:num_requests_running"][model] == 2
    assert s["vlmserve:num_requests_waiting"][model] == 5
    assert s["vlmserve:max_model_len"][model] == 4096
    assert s["vlmserve:prefix_cache_queries_total"][model] == 1024
    assert s["vlmserve:prefix_cache_hits_total"][model] == 256
    assert s["vlmserve:prefix_cache_bytes"][model] == 1000
    assert s["vlmserve:encoder_cache_hits_total"][model] == 3
    assert s["vlmserve:encoder_cache_misses_total"][model] == 1


def test_remote_replicas_report_health_load_and_latency() -> None:
    binding = EngineBinding(
        kind="remote", model="m", upstreams=("http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1")
    )
    engine = RemoteEngine(binding, RemoteEngineSettings())
    first, second = engine.pool.replicas
    second.is_up, first.num_outstanding, first.health_latency_s = False, 3, 0.012
    s = _scrape(Metrics({binding: engine}))
    label = (("model", "m"), ("replica", first.url))
    assert s["vlmserve:replica_up"][label] == 1
    assert s["vlmserve:replica_up"][(("model", "m"), ("replica", second.url))] == 0
    assert s["vlmserve:replica_outstanding_requests"][label] == 3
    assert s["vlmserve:replica_health_check_seconds"][label] == 0.012
