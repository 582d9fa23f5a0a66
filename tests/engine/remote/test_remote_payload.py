"""The upstream payload: prepared pixels as data URLs, sampling, passthrough, history."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from PIL import Image, ImageChops

from tests.engine.remote.builders import conversation, flat_image, photo_like
from vlmserve.engine.remote.payload import (
    ImageEncoder,
    build_payload,
    encode_data_url,
    to_json_bytes,
    tokenize_payload,
)
from vlmserve.engine.types import (
    GenerationRequest,
    MediaInput,
    MediaPart,
    Message,
    Prompt,
    SamplingParams,
    TextPart,
    ToolCall,
)


def encoder(encoding: str = "auto") -> ImageEncoder:
    return ImageEncoder(encoding, 90, 1 << 20)  # type: ignore[arg-type]


def decode(url: str) -> Image.Image:
    header, data = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def image_urls(payload: dict[str, Any]) -> list[str]:
    return [
        part["image_url"]["url"]
        for message in payload["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


def test_images_are_data_urls_never_remote_urls() -> None:
    payload = build_payload(conversation(3, photo_like(1)), "m", encoder(), True)
    urls = image_urls(payload)
    assert len(urls) == 1 and all(u.startswith("data:image/") for u in urls)
    assert "http" not in json.dumps(payload)


def test_flat_graphics_travel_lossless_as_png() -> None:
    image = flat_image((250, 10, 10), (120, 80))
    url = encode_data_url(image, "auto", 90)
    assert url.startswith("data:image/png")
    decoded = decode(url).convert("RGB")
    assert decoded.size == image.size
    assert ImageChops.difference(decoded, image).getbbox() is None  # identical pixels


def test_photos_travel_as_jpeg_close_to_the_prepared_pixels() -> None:
    image = photo_like(3, (128, 96))
    url = encode_data_url(image, "auto", 90)
    assert url.startswith("data:image/jpeg")
    decoded = decode(url).convert("RGB")
    assert decoded.size == image.size
    diff = ImageChops.difference(decoded, image).convert("L")
    mean_error = sum(i * n for i, n in enumerate(diff.histogram())) / (128 * 96)
    assert mean_error < 6


def test_encoding_is_deterministic_so_upstream_prefix_caches_hit() -> None:
    request = conversation(1, photo_like(5))
    first = to_json_bytes(build_payload(request, "m", encoder(), True))
    second = to_json_bytes(build_payload(request, "m", encoder(), True))
    assert first == second


def test_same_identity_different_size_is_not_served_from_cache() -> None:
    enc = encoder()
    small, large = flat_image((1, 2, 3), (32, 32)), flat_image((1, 2, 3), (64, 64))
    assert decode(enc.data_url(small, "same")).size == (32, 32)
    assert decode(enc.data_url(large, "same")).size == (64, 64)


def test_video_becomes_timestamped_frames_in_order() -> None:
    frames = tuple(flat_image((i * 60, 0, 0)) for i in range(3))
    video = MediaInput("video", frames, "vid", timestamps=(0.0, 0.5, 1.0), fps=2.0)
    prompt = Prompt((Message("user", (MediaPart(0), TextPart("what happens?"))),), (video,))
    payload = build_payload(GenerationRequest("r", prompt), "m", encoder(), True)
    content = payload["messages"][0]["content"]
    kinds = [p["type"] for p in content]
    assert kinds == ["text", "image_url"] * 3 + ["text"]
    assert [p["text"] for p in content[:6:2]] == [f"[frame at {t:.2f} s]" for t in (0, 0.5, 1)]
    pixels = [decode(p["image_url"]["url"]).convert("RGB").getpixel((0, 0)) for p in content[1:6:2]]
    assert pixels == [(0, 0, 0), (60, 0, 0), (120, 0, 0)]


def test_sampling_is_mapped_and_streaming_asks_for_usage() -> None:
    sampling = SamplingParams(
        temperature=0.2,
        top_p=0.8,
        max_tokens=33,
        n=2,
        stop=("###",),
        frequency_penalty=0.5,
        presence_penalty=0.25,
        seed=11,
    )
    request = GenerationRequest("r", Prompt((Message("user", (TextPart("hi"),)),)), sampling)
    payload = build_payload(request, "served-name", encoder(), False)
    assert payload == {
        "model": "served-name",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.8,
        "n": 2,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "max_tokens": 33,
        "stop": ["###"],
        "seed": 11,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_unset_limits_are_left_to_the_upstream() -> None:
    request = GenerationRequest("r", Prompt((Message("user", (TextPart("hi"),)),)))
    payload = build_payload(request, "m", encoder(), True)
    assert not {"max_tokens", "stop", "seed", "response_format", "tools"} & set(payload)


def test_response_format_and_tools_pass_through() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    request = GenerationRequest(
        "r",
        Prompt((Message("user", (TextPart("hi"),)),)),
        response_format={"type": "json_object"},
        tools=(tool,),
        tool_choice="auto",
    )
    payload = build_payload(request, "m", encoder(), True)
    assert payload["response_format"] == {"type": "json_object"}
    assert payload["tools"] == [tool]
    assert payload["tool_choice"] == "auto"


def test_tool_call_history_is_rendered_in_openai_shape() -> None:
    call = ToolCall("call_1", "lookup", '{"q": "x"}')
    prompt = Prompt(
        (
            Message("user", (TextPart("find x"),)),
            Message("assistant", (), tool_calls=(call,)),
            Message("tool", (TextPart("found"),), tool_call_id="call_1"),
        )
    )
    messages = build_payload(GenerationRequest("r", prompt), "m", encoder(), True)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "x"}'},
            }
        ],
    }
    assert messages[2] == {"role": "tool", "content": "found", "tool_call_id": "call_1"}


def test_a_tokenize_body_carries_the_tools_the_chat_template_renders() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    prompt = Prompt((Message("user", (TextPart("hi"),)),))
    assert "tools" not in tokenize_payload(prompt, "m", encoder())
    assert tokenize_payload(prompt, "m", encoder(), (tool,))["tools"] == [tool]
