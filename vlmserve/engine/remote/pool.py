"""The replicas of one remote engine: liveness from health checks, outstanding-request counts.

A replica starts up (optimistic: a request is as good a probe as a health check), goes down when
a connection to it fails or a health check fails, and comes back up when a health check passes.
The health check is ``GET {base}/models`` (every OpenAI-compatible server has it, vLLM adds
``max_model_len``); a replica that answers but does not serve our model counts as down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("vlmserve.engine.remote")


@dataclass(slots=True, eq=False)
class Replica:
    url: str  # the OpenAI base URL, e.g. http://10.0.0.5:8000/v1
    is_up: bool = True
    detail: str = "not checked yet"
    num_outstanding: int = 0
    num_requests: int = 0  # requests sent, for load reports
    max_model_len: int | None = None
    health_latency_s: float | None = None  # the last health check that was answered


class ReplicaPool:
    def __init__(self, urls: Sequence[str], model: str, health_timeout_s: float) -> None:
        self.replicas = tuple(Replica(url.rstrip("/")) for url in urls)
        self.model = model
        self.health_timeout_s = health_timeout_s

    @contextmanager
    def track(self, replica: Replica) -> Iterator[None]:
        """Count one outstanding request on ``replica`` for the duration of the block."""
        replica.num_outstanding += 1
        replica.num_requests += 1
        try:
            yield
        finally:
            replica.num_outstanding -= 1

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.is_up:
            log.warning("replica %s is down: %s", replica.url, reason)
        replica.is_up = False
        replica.detail = reason

    def mark_up(self, replica: Replica, detail: str = "healthy") -> None:
        if not replica.is_up:
            log.info("replica %s is back up", replica.url)
        replica.is_up = True
        replica.detail = detail

    async def check(self, client: httpx.AsyncClient, replica: Replica) -> None:
        """One health check; marks the replica up or down, never raises."""
        started = time.perf_counter()
        try:
            response = await client.get(f"{replica.url}/models", timeout=self.health_timeout_s)
        except httpx.HTTPError as exc:
            self.mark_down(replica, f"health check failed: {type(exc).__name__} {exc}".strip())
            return
        replica.health_latency_s = time.perf_counter() - started
        if response.status_code != 200:
            self.mark_down(replica, f"health check answered {response.status_code}")
            return
        problem = self._read_models(replica, response)
        if problem:
            self.mark_down(replica, problem)
        else:
            self.mark_up(replica)

    def _read_models(self, replica: Replica, response: httpx.Response) -> str | None:
        try:
            cards = response.json().get("data")
        except (ValueError, AttributeError):
            return "health check: /models did not answer a JSON model list"
        if not isinstance(cards, list) or not cards:
            return None  # nothing listed: trust the replica (some servers list nothing)
        card = next((c for c in cards if isinstance(c, dict) and c.get("id") == self.model), None)
        if card is None:
            ids = ", ".join(str(c.get("id")) for c in cards if isinstance(c, dict))
            return f"serves {ids}, not {self.model}"
        # vLLM says max_model_len; a vlmserve upstream says context_window.
        replica.max_model_len = _int_or_none(card.get("max_model_len", card.get("context_window")))
        return None

    async def check_all(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self.check(client, r) for r in self.replicas))

    async def run_health_checks(self, client: httpx.AsyncClient, interval_s: float) -> None:
        """Check every replica now and then every ``interval_s`` seconds, until cancelled."""
        while True:
            await self.check_all(client)
            await asyncio.sleep(interval_s)

    def summary(self) -> str:
        num_up = sum(r.is_up for r in self.replicas)
        down = [f"{r.url} ({r.detail})" for r in self.replicas if not r.is_up]
        text = f"{num_up} of {len(self.replicas)} replicas up"
        return text + (": down " + "; ".join(down) if down else "")

    def max_model_len(self) -> int | None:
        known = [r.max_model_len for r in self.replicas if r.max_model_len is not None]
        return min(known) if known else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
