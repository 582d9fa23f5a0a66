"""Rate limits per key: each limit holds exactly at its edge under concurrency, with OpenAI's
headers; TPM reservations are reconciled with the real usage; a spent quota refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.api.accounts import BODY, bearer, create_key, server
from tests.fakes import FakeEngine
from vlmserve.api.limits import RateLimiter
from vlmserve.errors import RateLimitError
from vlmserve.settings import LimitsSettings


def _tier(**limits: int) -> dict[str, Any]:
    return {"tiers": {"t": limits}, "default_tier": "t"}


async def _burst(base_url: str, n: int, body: dict[str, Any], key: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        calls = [
            client.post("/v1/chat/completions", json=body, headers=bearer(key)) for _ in range(n)
        ]
        return list(await asyncio.gather(*calls))


def test_rpm_admits_exactly_the_limit_of_a_concurrent_burst(tmp_path: Path) -> None:
    key = create_key(tmp_path, "burst")
    srv, live = server(tmp_path, limits=_tier(rpm=5))
    with srv:
        replies = asyncio.run(_burst(live.base_url, 16, BODY, key))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert (len(ok), len(refused)) == (5, 11)
    for reply in refused:
        error = reply.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "RPM" in error["message"]
        assert 1 <= int(reply.headers["retry-after"]) <= 60
        assert reply.headers["x-ratelimit-limit-requests"] == "5"
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)[0] == 0


def test_concurrency_admits_exactly_the_limit_in_flight(tmp_path: Path) -> None:
    key = create_key(tmp_path, "conc")
    srv, live = server(tmp_path, FakeEngine(token_delay_s=0.5), limits=_tier(concurrency=3))
    with srv:
        replies = asyncio.run(_burst(live.base_url, 10, BODY, key))
        codes = sorted(r.status_code for r in replies)
        assert codes == [200] * 3 + [429] * 7
        for reply in (r for r in replies if r.status_code == 429):
            assert "concurrency 3" in reply.json()["error"]["message"]
            assert reply.json()["error"]["type"] == "rate_limit_error"
            assert reply.headers["retry-after"] == "1"
        # the slots come back when the requests end
        again = asyncio.run(_burst(live.base_url, 3, BODY, key))
        assert [r.status_code for r in again] == [200, 200, 200]


def test_tpm_reserves_max_tokens_and_reconciles_with_the_real_usage(tmp_path: Path) -> None:
    key = create_key(tmp_path, "tpm")
    body = {**BODY, "max_tokens": 40}  # "hi": 2 prompt tokens, "echo: hi": 2 completion tokens
    srv, live = server(tmp_path, FakeEngine(token_delay_s=0.3), limits=_tier(tpm=100))
    with srv, httpx.Client(base_url=live.base_url, timeout=60) as http:
        first = http.post("/v1/chat/completions", json=body, headers=bearer(key))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert first.headers["x-ratelimit-remaining-tokens"] == "96"  # 42 reserved, 4 used
        # 96 left: two reservations of 42 fit, a third does not, however they arrive
        replies = asyncio.run(_burst(live.base_url, 5, body, key))
        codes = sorted(r.status_code for r in replies)
        assert codes == [200, 200, 429, 429, 429]
        refused = next(r for r in replies if r.status_code == 429)
        assert "TPM" in refused.json()["error"]["message"]
        assert "retry-after" in refused.headers
        after = http.get("/v1/models", headers=bearer(key))
        assert after.headers["x-ratelimit-remaining-tokens"] == "88"  # 3 requests x 4 tokens


def test_a_request_larger_than_the_tpm_limit_says_to_lower_max_tokens(tmp_path: Path) -> None:
    key = create_key(tmp_path, "big")
    srv, live = server(tmp_path, limits=_tier(tpm=10))
    with srv, httpx.Client(base_url=live.base_url) as http:
        reply = http.post(
            "/v1/chat/completions", json={**BODY, "max_tokens": 50}, headers=bearer(key)
        )
    assert reply.status_code == 429 and "lower max_tokens" in reply.json()["error"]["message"]


def test_a_spent_quota_refuses_with_quota_exceeded(tmp_path: Path) -> None:
    key = create_key(tmp_path, "quota", quota_tokens=5)
    srv, live = server(tmp_path)
    with srv, httpx.Client(base_url=live.base_url) as http:
        assert http.post("/v1/chat/completions", json=BODY, headers=bearer(key)).status_code == 200
        assert http.post("/v1/chat/completions", json=BODY, headers=bearer(key)).status_code == 200
        refused = http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "5 tokens" in refused.json()["error"]["message"]


def test_quota_counts_usage_from_before_a_restart(tmp_path: Path) -> None:
    key = create_key(tmp_path, "quota", quota_tokens=4)
    srv, live = server(tmp_path)
    with srv, httpx.Client(base_url=live.base_url) as http:
        assert http.post("/v1/chat/completions", json=BODY, headers=bearer(key)).status_code == 200
    srv, live = server(tmp_path)
    with srv, httpx.Client(base_url=live.base_url) as http:
        refused = http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
    assert refused.json()["error"]["code"] == "quota_exceeded"


def test_rpm_window_slides_instead_of_resetting_on_the_minute() -> None:
    limiter = RateLimiter(LimitsSettings(tiers={"t": {"rpm": 2}}, default_tier="t"))
    limiter.admit("k", None, None, now=0.0).release(0, 0.0)
    limiter.admit("k", None, None, now=30.0).release(0, 30.0)
    try:
        limiter.admit("k", None, None, now=59.0)
        raise AssertionError("a third request within 60 s was admitted")
    except RateLimitError as exc:
        assert exc.retry_after_s == 1.0  # the request at t=0 leaves the window at t=60
    limiter.admit("k", None, None, now=60.5)  # t=0 has left the window


def test_a_tpm_refusal_does_not_count_as_a_request() -> None:
    limiter = RateLimiter(LimitsSettings(tiers={"t": {"rpm": 1, "tpm": 10}}, default_tier="t"))
    admission = limiter.admit("k", None, None, now=0.0)
    try:
        admission.reserve(11, now=0.0)
    except RateLimitError:
        admission.release(0, 0.0)
    limiter.admit("k", None, None, now=1.0)  # the RPM slot was given back
