"""Usage ledger rows for finished, streamed, aborted and failed requests; /metrics parsed by
prometheus-client with values that match the requests made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.accounts import ADMIN, BODY, bearer, create_key, server
from tests.fakes import FakeEngine


def _usage(http: httpx.Client, **params: str) -> list[dict[str, Any]]:
    reply = http.get("/v1/usage", params=params, headers=bearer(ADMIN))
    assert reply.status_code == 200
    return list(reply.json()["data"])


def test_ledger_has_a_row_for_streamed_aborted_and_failed_requests(tmp_path: Path) -> None:
    key = create_key(tmp_path, "ledger")
    engine = FakeEngine(token_delay_s=0.2)
    srv, live = server(tmp_path, engine)
    long_text = " ".join(f"w{i}" for i in range(40))
    with srv, httpx.Client(base_url=live.base_url, timeout=30, headers=bearer(key)) as http:
        plain = http.post("/v1/chat/completions", json=BODY)
        assert plain.status_code == 200
        stream = {**BODY, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=stream) as reply:
            assert reply.status_code == 200 and reply.read().endswith(b"[DONE]\n\n")
        aborted = {**BODY, "stream": True, "messages": [{"role": "user", "content": long_text}]}
        with http.stream("POST", "/v1/chat/completions", json=aborted) as reply:
            lines = reply.iter_lines()
            while "w1" not in next(lines):  # a few tokens in, then hang up
                pass
        failed = http.post("/v1/chat/completions", json={**BODY, "model": "no-such-model"})
        assert failed.status_code == 400
        deadline = time.monotonic() + 10
        while _usage(http, key="ledger")[0]["requests"] < 4:
            assert time.monotonic() < deadline, "the ledger did not get 4 rows"
            time.sleep(0.1)
    # in the order the requests ended: the server may notice the hang-up after the next request
    rows = sorted(
        _rows(tmp_path), key=lambda r: ["ok", "aborted", "model_not_found"].index(r["status"])
    )
    assert [r["status"] for r in rows] == ["ok", "ok", "aborted", "model_not_found"]
    assert all(r["key_name"] == "ledger" and r["key_id"].startswith("key_") for r in rows)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows[:2]] == [(2, 2), (2, 2)]
    aborted_row = rows[2]
    assert aborted_row["prompt_tokens"] == 41
    assert 2 <= aborted_row["completion_tokens"] < 41  # what was generated until the hang-up
    assert rows[3]["model"] == "unknown" and rows[3]["completion_tokens"] == 0
    assert all(len(r["trace_id"]) == 32 for r in rows)


def _rows(data_dir: Path) -> list[dict[str, Any]]:
    import asyncio
    from dataclasses import asdict

    from vlmserve.storage.db import Database
    from vlmserve.storage.usage import UsageLedger

    async def read() -> list[dict[str, Any]]:
        db = Database(data_dir / "vlmserve.db")
        try:
            return [asdict(r) for r in await UsageLedger(db).rows()]
        finally:
            await db.close()

    return asyncio.run(read())


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_parse_and_match_the_requests_made(tmp_path: Path) -> None:
    srv, live = server(tmp_path)
    with srv, httpx.Client(base_url=live.base_url, headers=bearer(ADMIN)) as http:
        for _ in range(3):
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
        assert http.post("/v1/chat/completions", json={**BODY, "model": "x"}).status_code == 400
        reply = http.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    s = _samples(reply.text)
    model = (("model", "step-1v-8k"),)
    assert s[("vlmserve:requests_total", (("model", "step-1v-8k"), ("status", "200")))] == 3
    assert s[("vlmserve:requests_total", (("model", "unknown"), ("status", "400")))] == 1
    assert s[("vlmserve:prompt_tokens_total", model)] == 6
    assert s[("vlmserve:generation_tokens_total", model)] == 6
    assert (
        s[
            (
                "vlmserve:request_success_total",
                (("finished_reason", "stop"), ("model", "step-1v-8k")),
            )
        ]
        == 3
    )
    assert s[("vlmserve:time_to_first_token_seconds_count", model)] == 3
    assert s[("vlmserve:inter_token_latency_seconds_count", model)] == 3  # 2 tokens each
    assert s[("vlmserve:e2e_request_latency_seconds_count", model)] == 3
    assert s[("vlmserve:request_queue_time_seconds_count", model)] == 3
    engine = (("model", "HuggingFaceTB/SmolVLM-256M-Instruct"),)
    assert s[("vlmserve:num_requests_running", engine)] == 0
    assert s[("vlmserve:engine_ready", engine)] == 1


def test_metrics_can_be_restricted_to_admin_keys(tmp_path: Path) -> None:
    key = create_key(tmp_path, "user")
    srv, live = server(tmp_path, server={"metrics_admin_only": True})
    with srv, httpx.Client(base_url=live.base_url) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=bearer(key)).status_code == 403
        assert http.get("/metrics", headers=bearer(ADMIN)).status_code == 200


def test_rate_limit_refusals_are_counted_by_limit(tmp_path: Path) -> None:
    key = create_key(tmp_path, "rl")
    limits = {"tiers": {"t": {"rpm": 1}}, "default_tier": "t"}
    srv, live = server(tmp_path, limits=limits)
    with srv, httpx.Client(base_url=live.base_url) as http:
        for _ in range(3):
            http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
        s = _samples(http.get("/metrics", headers=bearer(ADMIN)).text)
    assert s[("vlmserve:rate_limited_requests_total", (("limit", "rpm"),))] == 2
