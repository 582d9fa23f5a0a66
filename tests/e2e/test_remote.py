"""A front vlmserve in remote mode (``serve --model DIR --upstream URL --upstream URL``), driven
through its API with the official openai SDK.

Two fronts share the module: one over two real ``vlmserve serve`` replicas (the same dummy model:
counts must agree, a replica is killed and restarted), one over three fake vLLM replicas in this
process (they record what they receive: routing and payloads are observable).
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import ServeProcess
from tests.engine.remote.upstream import Behaviour, FakeUpstream, UpstreamServer

MODEL = "step-1o-turbo-vision"
FAKE_MODEL = "fake-vlm"
FAST_HEALTH = {
    "VLMSERVE_REMOTE__HEALTH_INTERVAL_S": "0.2",
    "VLMSERVE_REMOTE__HEALTH_TIMEOUT_S": "1",
    "VLMSERVE_REMOTE__CONNECT_TIMEOUT_S": "1",
}


@dataclass
class Cluster:
    model: Path
    replicas: list[ServeProcess]  # vlmserve replicas of ``front``
    front: ServeProcess
    fakes: list[UpstreamServer]  # fake vLLM replicas of ``fake_front``
    fake_front: ServeProcess
    stopped: list[ServeProcess] = field(default_factory=list)


def upstream_args(urls: list[str], model: str) -> list[str]:
    return [arg for url in urls for arg in ("--upstream", url)] + ["--upstream-model", model]


# Replicas that run one sequence at a time, so requests beyond the first wait in a replica's queue
# without a byte sent: what the failover test needs to tell waiting from streaming requests.
ONE_AT_A_TIME = {"VLMSERVE_ENGINE__MAX_NUM_SEQS": "1"}


@pytest.fixture(scope="module")
def cluster(dummy_models: dict[str, Path]) -> Iterator[Cluster]:
    model = dummy_models["qwen2_vl"]
    fakes = [UpstreamServer(FakeUpstream(Behaviour(model=FAKE_MODEL))).start() for _ in range(3)]
    replicas = [ServeProcess(model, log_level="info", extra_env=ONE_AT_A_TIME) for _ in range(2)]
    front = ServeProcess(
        model, upstream_args([r.api for r in replicas], MODEL), extra_env=FAST_HEALTH
    )
    fake_front = ServeProcess(
        model, upstream_args([f.base_url for f in fakes], FAKE_MODEL), extra_env=FAST_HEALTH
    )
    procs = [*replicas, front, fake_front]
    c = Cluster(model, replicas, front, fakes, fake_front, stopped=procs)
    try:
        for proc in procs:
            proc.wait_ready()
        wait_replicas_up(front, 2)
        yield c
    finally:
        for proc in c.stopped:
            proc.stop()
        for fake in fakes:
            fake.stop()


def wait_replicas_up(front: ServeProcess, num_up: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    detail = ""
    while time.monotonic() < deadline:
        engines = httpx.get(front.base_url + "/readyz", timeout=5).json()["engines"]
        detail = next(iter(engines.values()))["detail"]
        if detail.startswith(f"{num_up} of "):
            return
        time.sleep(0.05)
    raise AssertionError(f"the front never saw {num_up} replicas up: {detail}")


def client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)


def png_data_url(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> str:
    return "data:image/png;base64," + base64.b64encode(png(colour, size)).decode()


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def image_turn(text: str, url: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


# -- answers and accounting, through vlmserve replicas ---------------------------------------


def test_answers_come_back_streamed_and_whole(cluster: Cluster) -> None:
    messages: Any = [image_turn("What is this?", png_data_url((200, 30, 30)))]
    reply = client(cluster.front).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, seed=1
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 6
    stream = client(cluster.front).chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=6,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    finished: dict[int, str] = {}
    usages = []
    for chunk in stream:
        usages.append(chunk.usage)
        finished.update({c.index: c.finish_reason for c in chunk.choices if c.finish_reason})
    assert set(finished) == {0, 1}
    assert all(u is None for u in usages[:-1])  # OpenAI: one usage chunk, the last
    assert usages[-1] is not None and usages[-1].prompt_tokens == reply.usage.prompt_tokens


def test_billed_prompt_tokens_equal_the_front_token_count(cluster: Cluster) -> None:
    messages: Any = [
        {"role": "system", "content": "You are terse."},
        image_turn("Describe it.", png_data_url((0, 128, 255), (300, 200))),
        {"role": "assistant", "content": "A blue picture."},
        image_turn("And this one?", png_data_url((250, 250, 0), (40, 90))),
    ]
    counted = httpx.post(
        cluster.front.api + "/token/count",
        json={"model": MODEL, "messages": messages},
        timeout=60,
    ).json()["data"]
    reply = client(cluster.front).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1
    )
    assert reply.usage is not None
    assert counted["total_tokens"] == reply.usage.prompt_tokens
    details = reply.usage.prompt_tokens_details
    assert details is not None and counted["image_tokens"] == details.image_tokens  # type: ignore[attr-defined]
    assert 0 < counted["image_tokens"] < counted["total_tokens"]


# -- routing and payloads, through fake vLLM replicas ----------------------------------------


def served_by(fakes: list[UpstreamServer], marker: str) -> set[int]:
    """The fakes that received a request whose first user message mentions ``marker``."""
    return {
        i
        for i, fake in enumerate(fakes)
        for body in fake.upstream.requests
        if marker in str(next(m for m in body["messages"] if m["role"] == "user")["content"])
    }


def test_image_conversation_turns_stick_to_one_replica(cluster: Cluster) -> None:
    sdk = client(cluster.fake_front)
    histories: dict[str, list[Any]] = {
        f"user-{u}": [image_turn(f"user-{u}: what is this?", png_data_url((u * 30, 90, 200)))]
        for u in range(8)
    }
    for turn in range(3):  # interleaved: every user's turn 1, then every user's turn 2, ...
        for history in histories.values():
            reply = sdk.chat.completions.create(model=MODEL, messages=history, max_tokens=4)
            history += [
                {"role": "assistant", "content": reply.choices[0].message.content},
                {"role": "user", "content": f"and question {turn + 2}?"},
            ]
    homes = {marker: served_by(cluster.fakes, marker) for marker in histories}
    assert all(len(home) == 1 for home in homes.values()), homes
    assert len(set.union(*homes.values())) > 1  # and not everything on one replica


@pytest.fixture
def image_server() -> Iterator[str]:
    body = png((10, 220, 10), (50, 40))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/green.png"
    server.shutdown()
    server.server_close()


def test_images_reach_replicas_as_data_urls_never_as_urls(
    cluster: Cluster, image_server: str
) -> None:
    messages: Any = [
        image_turn("url-marker: compare", image_server),
        image_turn("and this", png_data_url((1, 2, 3))),
    ]
    client(cluster.fake_front).chat.completions.create(model=MODEL, messages=messages)
    (home,) = served_by(cluster.fakes, "url-marker")
    body = cluster.fakes[home].upstream.requests[-1]
    urls = [
        part["image_url"]["url"]
        for message in body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]
    assert len(urls) == 2
    assert all(
        url.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for url in urls
    )
    assert image_server not in str(body)


# -- failover and recovery, with real processes ----------------------------------------------


@dataclass
class StreamRecord:
    """One long streaming request; it hangs up on its own a few chunks after the kill."""

    started: threading.Event = field(default_factory=threading.Event)
    outcome: str = "running"  # "ok" or the error


def stream_until(front: ServeProcess, text: str, killed: threading.Event) -> StreamRecord:
    record = StreamRecord()

    def run() -> None:
        # closed here: a client left to the garbage collector warns of its open socket
        with client(front) as sdk:
            try:
                stream = sdk.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": text}],
                    max_tokens=3000,
                    temperature=1.0,
                    stream=True,
                )
                after_kill = 0
                for _ in stream:
                    record.started.set()
                    after_kill += killed.is_set()
                    if after_kill >= 3:
                        break
                stream.close()  # frees the replica for the next request
                record.outcome = "ok"
            except openai.APIError as exc:
                record.outcome = f"{type(exc).__name__}: {exc}"

    threading.Thread(target=run, daemon=True).start()
    return record


def until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_killed_replica_loses_no_request_that_had_not_started_streaming(
    cluster: Cluster,
) -> None:
    killed = threading.Event()
    # Each replica runs one sequence at a time: two stream, the others wait in their queues.
    records = [stream_until(cluster.front, f"story {i}", killed) for i in range(6)]
    until(lambda: sum(r.started.is_set() for r in records) >= 2)
    waiting = [r for r in records if not r.started.is_set()]
    cluster.replicas[1].kill()
    killed.set()
    until(lambda: all(r.outcome != "running" for r in records))
    assert waiting, "every request had started before the kill: nothing was tested"
    assert [r.outcome for r in waiting] == ["ok"] * len(waiting)
    # The killed replica's own stream may fail (its client holds half an answer); no other does.
    assert sum(r.outcome != "ok" for r in records) <= 1


def test_killed_replica_comes_back_and_gets_traffic_again(cluster: Cluster) -> None:
    old = cluster.replicas[1]
    if old.proc.poll() is None:
        old.kill()
    wait_replicas_up(cluster.front, 1)
    sdk = client(cluster.front)
    hi: Any = [{"role": "user", "content": "hi"}]
    reply = sdk.chat.completions.create(model=MODEL, messages=hi, max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")  # served by the survivor
    back = ServeProcess(cluster.model, port=old.port, log_level="info", extra_env=ONE_AT_A_TIME)
    cluster.stopped.append(back)
    back.wait_ready()
    wait_replicas_up(cluster.front, 2)
    for u in range(12):  # distinct conversations hash onto both replicas
        messages: Any = [image_turn(f"user {u}", png_data_url((u * 20, 0, 0)))]
        sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert "POST /v1/chat/completions 200" in back.output()
