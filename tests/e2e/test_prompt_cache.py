"""The automatic prompt cache through a real server: `cached_tokens` as Step and OpenAI show it."""

from __future__ import annotations

from typing import Any

import openai
from openai.types import CompletionUsage

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_server_process import MODEL, client, png_data_url

SYSTEM = "Rules: " + " ".join(f"rule {i} says be brief." for i in range(120))  # > 512 tokens


def conversation(color: tuple[int, int, int]) -> Any:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url(color)}},
                {"type": "text", "text": SYSTEM + " What is this?"},
            ],
        }
    ]


def cached(usage: CompletionUsage | None) -> int:
    assert usage is not None and usage.prompt_tokens_details is not None
    top = (usage.model_extra or {})["cached_tokens"]
    assert top == usage.prompt_tokens_details.cached_tokens  # Step's field equals OpenAI's
    assert top % 256 == 0 and top < usage.prompt_tokens
    return int(top)


def streamed_usages(sdk: openai.OpenAI, messages: Any) -> list[int]:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
    )
    return [cached(chunk.usage) for chunk in stream if chunk.usage is not None]


def test_second_request_reports_cached_tokens_in_every_stream_chunk(server: ServerProcess) -> None:
    sdk = client(server)
    first = sdk.chat.completions.create(
        model=MODEL,
        messages=conversation((10, 200, 30)),
        max_tokens=6,
        temperature=0,
    )
    assert cached(first.usage) == 0
    counts = streamed_usages(sdk, conversation((10, 200, 30)))
    assert counts and all(c == counts[0] for c in counts) and counts[0] >= 256
    assert set(streamed_usages(sdk, conversation((200, 10, 30)))) == {0}  # another picture
