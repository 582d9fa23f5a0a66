"""Video end to end: a real server process on tiny dummy models of both families (Qwen2-VL takes
video natively, idefics3 gets timestamped frames), driven by the official openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import FAMILIES, ServerProcess
from tests.media.videos import encode

MODEL, IMAGE_ONLY = "step-1o-turbo-vision", "step-1o-vision-32k"
CLIP = encode("MP4", seconds=4.0, size=(96, 64))  # 4 frames sampled at 1 fps


@pytest.fixture(scope="module", params=FAMILIES)
def video_server(
    request: pytest.FixtureRequest,
    dummy_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp(f"video-{request.param}")
    env = {"VLMSERVE_STORAGE__DATA_DIR": str(data_dir)}
    proc = ServerProcess(dummy_models[request.param], extra_env=env)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def ask(url: str) -> list[dict[str, Any]]:
    video = {"type": "video_url", "video_url": {"url": url}}
    return [{"role": "user", "content": [video, {"type": "text", "text": "What happens?"}]}]


def data_url(data: bytes = CLIP) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def test_video_is_answered_and_billed_as_video_tokens(video_server: ServerProcess) -> None:
    reply = client(video_server).chat.completions.create(
        model=MODEL,
        messages=ask(data_url()),  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    details = usage.prompt_tokens_details
    assert 0 < details.video_tokens < usage.prompt_tokens  # type: ignore[attr-defined]
    assert details.image_tokens == 0  # type: ignore[attr-defined]
    counted = httpx.post(
        video_server.api + "/token/count",
        json={"model": MODEL, "messages": ask(data_url())},
        timeout=60,
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["data"]["total_tokens"] == usage.prompt_tokens
    assert counted.json()["data"]["video_tokens"] == details.video_tokens  # type: ignore[attr-defined]


def test_uploaded_video_by_stepfile_streams_and_bills_the_same(video_server: ServerProcess) -> None:
    sdk = client(video_server)
    created = sdk.files.create(file=("clip.mp4", CLIP), purpose="storage")  # type: ignore[arg-type]
    by_file = sdk.chat.completions.create(
        model=MODEL,
        messages=ask(f"stepfile://{created.id}"),  # type: ignore[arg-type]
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )  # type: ignore[call-overload]
    usage = [chunk.usage for chunk in by_file if chunk.usage is not None][-1]
    by_data = sdk.chat.completions.create(
        model=MODEL,
        messages=ask(data_url()),  # type: ignore[arg-type]
        max_tokens=2,
    )
    assert by_data.usage is not None and usage.prompt_tokens == by_data.usage.prompt_tokens


def test_video_to_an_image_only_model_is_400_naming_video_models(
    video_server: ServerProcess,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(video_server).chat.completions.create(
            model=IMAGE_ONLY,
            messages=ask(data_url()),  # type: ignore[arg-type]
        )
    assert caught.value.code == "unsupported_content_type"
    assert IMAGE_ONLY in str(caught.value) and MODEL in str(caught.value)


def test_corrupt_video_is_400(video_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(video_server).chat.completions.create(
            model=MODEL,
            messages=ask(data_url(CLIP[: len(CLIP) // 2])),  # type: ignore[arg-type]
        )
    assert caught.value.code == "invalid_video"
