"""Hostile requests against a real server (tiny dummy model): a hopeless huge prompt is refused
without delaying anyone, and sampling parameters at the edges never crash the engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.rss import rss_bytes

MODEL = "step-1v-8k"  # 8192-token window
HUGE_CHARS = 8 * 1024 * 1024  # 8 MB of text: ~13 s of tokenizing on the tiny model's tokenizer


@pytest.fixture(scope="module")
def server(dummy_models: dict[str, Path]) -> Iterator[ServerProcess]:
    proc = ServerProcess(dummy_models["qwen2_vl"])
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def chat(base: str, content: str, timeout: float = 120, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=timeout)


def test_small_request_completes_promptly_while_a_huge_one_is_being_refused(
    server: ServerProcess,
) -> None:
    assert chat(server.base_url, "warm up", max_tokens=2).status_code == 200
    rss_before = rss_bytes(server.proc.pid)
    huge: dict[str, object] = {}

    def send_huge() -> None:
        started = time.monotonic()
        resp = chat(server.base_url, "hello world " * (HUGE_CHARS // 12), max_tokens=2)
        huge.update(status=resp.status_code, body=resp.json(), s=time.monotonic() - started)

    sender = threading.Thread(target=send_huge)
    sender.start()
    time.sleep(0.3)  # the huge body is on its way (or already refused)
    started = time.monotonic()
    small = chat(server.base_url, "Say something short.", max_tokens=4)
    small_s = time.monotonic() - started
    sender.join(timeout=120)
    assert small.status_code == 200, small.text
    assert small_s < 3.0, f"the small request waited {small_s:.1f} s behind the huge one"
    assert huge["status"] == 400, huge
    assert huge["body"]["error"]["code"] == "context_length_exceeded"  # type: ignore[index]
    assert huge["s"] < 5.0, f"the refusal took {huge['s']:.1f} s"
    growth = rss_bytes(server.proc.pid) - rss_before
    assert growth < 300 * 1024**2, f"the server kept {growth / 1024**2:.0f} MB after the refusal"


@pytest.mark.parametrize("temperature", [1e-300, 2.2e-309, 5e-324, 1e-7])
def test_tiny_positive_temperature_is_greedy_not_a_crash(
    server: ServerProcess, temperature: float
) -> None:
    greedy = chat(server.base_url, "Count to three.", max_tokens=6, temperature=0)
    tiny = chat(server.base_url, "Count to three.", max_tokens=6, temperature=temperature)
    assert tiny.status_code == 200, tiny.text
    text = tiny.json()["choices"][0]["message"]["content"]
    assert text == greedy.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), -1])
def test_seed_at_the_64_bit_edges_generates(server: ServerProcess, seed: int) -> None:
    resp = chat(server.base_url, "hi", max_tokens=3, temperature=1.0, seed=seed)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("seed", [2**64, -(2**64)])
def test_seed_beyond_64_bits_is_400(server: ServerProcess, seed: int) -> None:
    resp = chat(server.base_url, "hi", max_tokens=3, seed=seed)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "seed"


def test_lone_surrogate_reaches_no_tokenizer(server: ServerProcess) -> None:
    raw = '{"model": "' + MODEL + '", "messages": [{"role": "user", "content": "\\ud800"}]}'
    for path in ("/v1/chat/completions", "/v1/token/count"):
        resp = httpx.post(
            server.base_url + path,
            content=raw,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "messages[0].content"


def test_escaped_surrogate_in_replayed_tool_arguments_reaches_no_tokenizer(
    server: ServerProcess,
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '["\\ud800"]'}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    body = {"model": MODEL, "messages": messages, "max_tokens": 2}
    for path in ("/v1/chat/completions", "/v1/token/count"):
        resp = httpx.post(server.base_url + path, json=body, timeout=30)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "messages[1].tool_calls[0].function.arguments[0]"
