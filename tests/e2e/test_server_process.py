"""A real server process on a dummy model, driven by the official openai SDK and raw httpx."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess

MODEL = "step-1o-turbo-vision"


def png_data_url(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_turn(text: str, color: tuple[int, int, int]) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(color)}},
            {"type": "text", "text": text},
        ],
    }


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_sync_completion_with_image(server: ServerProcess) -> None:
    reply = client(server).chat.completions.create(
        model=MODEL, messages=[image_turn("What is this?", (255, 0, 0))], max_tokens=8, seed=1
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    usage = reply.usage
    assert usage is not None and usage.completion_tokens <= 8
    assert usage.prompt_tokens_details is not None
    assert 0 < usage.prompt_tokens_details.image_tokens < usage.prompt_tokens  # type: ignore[attr-defined]


def test_seeded_greedy_output_is_reproducible(server: ServerProcess) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=10)
    a = client(server).chat.completions.create(temperature=0, **kwargs)  # type: ignore[call-overload]
    b = client(server).chat.completions.create(temperature=0, **kwargs)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    c = client(server).chat.completions.create(temperature=1, seed=7, **kwargs)  # type: ignore[call-overload]
    d = client(server).chat.completions.create(temperature=1, seed=7, **kwargs)  # type: ignore[call-overload]
    assert c.choices[0].message.content == d.choices[0].message.content


def test_async_concurrent_requests_all_complete(server: ServerProcess) -> None:
    async def run() -> list[str | None]:
        aclient = openai.AsyncOpenAI(
            base_url=server.api, api_key="unused", max_retries=0, timeout=120
        )
        calls = [
            aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"count {i}"}], max_tokens=6
            )
            for i in range(4)
        ]
        replies = await asyncio.gather(*calls)
        await aclient.close()
        return [r.choices[0].finish_reason for r in replies]

    assert all(reason in ("stop", "length") for reason in asyncio.run(run()))


def test_streaming_with_n_choices_through_the_sdk(server: ServerProcess) -> None:
    stream = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    finished: dict[int, str] = {}
    usage_seen = []
    for chunk in stream:
        usage_seen.append(chunk.usage)
        for choice in chunk.choices:
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1}
    assert all(u is None for u in usage_seen[:-1])  # OpenAI: one usage chunk, the last
    assert usage_seen[-1] is not None and usage_seen[-1].completion_tokens <= 12


def test_raw_sse_framing(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=120) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert len(resp.headers["x-trace-id"]) == 32
        text = "".join(resp.iter_text())
    frames = text.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    first = json.loads(frames[0].removeprefix("data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_multi_turn_with_an_image_in_history(server: ServerProcess) -> None:
    history = [
        image_turn("Describe it.", (0, 128, 255)),
        {"role": "assistant", "content": "A blue picture."},
        image_turn("And this one, compared to the first?", (255, 255, 0)),
    ]
    one = client(server).chat.completions.create(model=MODEL, messages=history[:1], max_tokens=1)
    two = client(server).chat.completions.create(model=MODEL, messages=history, max_tokens=1)
    assert one.usage and two.usage
    details_one = one.usage.prompt_tokens_details
    details_two = two.usage.prompt_tokens_details
    assert details_one is not None and details_two is not None
    # both images are rendered: the history's image costs as much as the new one
    assert details_two.image_tokens == 2 * details_one.image_tokens  # type: ignore[attr-defined]


def test_token_count_equals_billed_prompt_tokens(server: ServerProcess) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        image_turn("What colour?", (10, 200, 30)),
    ]
    counted = httpx.post(
        server.api + "/token/count", json={"model": MODEL, "messages": messages}, timeout=120
    ).json()["data"]["total_tokens"]
    reply = client(server).chat.completions.create(model=MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert reply.usage is not None and counted == reply.usage.prompt_tokens


def test_prompt_over_the_context_window_is_400_with_both_numbers(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model="step-1v-8k", messages=[{"role": "user", "content": "hello " * 9000}]
        )
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded"
    assert "8192" in body["message"]


def test_disconnect_mid_stream_frees_the_engine(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 3000,
        "temperature": 1.0,
        "seed": 3,
        "stream": True,
    }
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=120) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i > 6:
                assert busy(server)  # still generating when the client hangs up
                break
    deadline = time.monotonic() + 5
    while busy(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not busy(server)  # the abandoned 3000-token answer was aborted
    started = time.monotonic()
    reply = client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - started < 5  # not queued behind the abandoned 3000-token answer


def busy(server: ServerProcess) -> bool:
    engines = httpx.get(server.base_url + "/readyz", timeout=10).json()["engines"].values()
    return any(e["running"] or e["waiting"] for e in engines)


def test_eight_concurrent_streams_with_images_complete_with_exact_usage(
    server: ServerProcess,
) -> None:
    conversations = [
        [image_turn(f"What is in picture {i}?", (30 * i, 255 - 30 * i, 90))] for i in range(8)
    ]

    async def stream(aclient: openai.AsyncOpenAI, messages: list) -> tuple[int, int, str]:
        chunks = await aclient.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        reason, last_usage = "", None
        async for chunk in chunks:
            last_usage = chunk.usage
            for choice in chunk.choices:
                reason = choice.finish_reason or reason
        assert last_usage is not None
        return last_usage.prompt_tokens, last_usage.completion_tokens, reason

    async def run() -> list[tuple[int, int, str]]:
        aclient = openai.AsyncOpenAI(
            base_url=server.api, api_key="unused", max_retries=0, timeout=120
        )
        try:
            return list(await asyncio.gather(*(stream(aclient, m) for m in conversations)))
        finally:
            await aclient.close()

    results = asyncio.run(run())
    for messages, (prompt_tokens, completion_tokens, reason) in zip(
        conversations, results, strict=True
    ):
        counted = httpx.post(
            server.api + "/token/count", json={"model": MODEL, "messages": messages}, timeout=120
        ).json()["data"]["total_tokens"]
        assert prompt_tokens == counted
        assert reason in ("stop", "length")
        assert 1 <= completion_tokens <= 12
        assert reason == "stop" or completion_tokens == 12
    ready = httpx.get(server.base_url + "/readyz", timeout=10).json()
    engine = next(iter(ready["engines"].values()))
    assert engine["running"] == 0 and engine["kv_cache_bytes"] == 0
    assert engine["kv_cache_max_bytes"] > 0
