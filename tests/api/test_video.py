"""Video parts through the API (fake engine): usage, token counts, limits from the catalogue,
uploads by the official SDK, and models without video input."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer, start_fake_server
from tests.fakes import FRAME_TOKENS, IMAGE_TOKENS, FakeEngine
from tests.media.videos import encode
from vlmserve.settings import Settings

VIDEO_MODEL, SHORT_MODEL, IMAGE_MODEL = "step-1o-turbo-vision", "short-video", "step-1v-8k"
CLIP = encode("MP4", seconds=3.0)  # 3 frames at 1 fps
MAX_BYTES = len(CLIP) + 500
CATALOG = f"""
[[models]]
id = "{VIDEO_MODEL}"
context_window = 32768
input_modalities = ["text", "image", "video"]
max_images = 60

[[models]]
id = "{SHORT_MODEL}"
context_window = 32768
input_modalities = ["text", "image", "video"]
max_video_seconds = 2.0
max_video_bytes = {MAX_BYTES}

[[models]]
id = "{IMAGE_MODEL}"
context_window = 8192
input_modalities = ["text", "image"]
"""


def video_url(data: bytes = CLIP) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def video_part(url: str) -> dict[str, Any]:
    return {"type": "video_url", "video_url": {"url": url}}


def ask(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "what happens"}]}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("video-api")
    catalog = root / "catalog.toml"
    catalog.write_text(CATALOG)
    settings = Settings(
        catalog={"file": catalog},
        storage={"data_dir": root / "data"},
        server={"max_body_bytes": 4 * 1024 * 1024},
    )
    server, live = start_fake_server(settings, FakeEngine())
    with server:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def chat(
    http: httpx.Client, messages: list[dict[str, Any]], model: str = VIDEO_MODEL
) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages})


def error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code, err
    return err


def test_video_reaches_the_engine_as_timestamped_frames_and_bills_video_tokens(
    http: httpx.Client, server: LiveServer
) -> None:
    resp = chat(http, ask(video_part(video_url())))
    assert resp.status_code == 200, resp.text
    details = resp.json()["usage"]["prompt_tokens_details"]
    assert details["video_tokens"] == 3 * FRAME_TOKENS and details["image_tokens"] == 0
    [video] = server.engine.requests[-1].prompt.media
    assert video.kind == "video" and len(video.frames) == 3
    assert video.timestamps == (0.0, 1.0, 2.0) and video.fps == pytest.approx(1.0)


def test_token_count_counts_a_video_exactly_as_chat_bills_it(http: httpx.Client) -> None:
    png = base64.b64encode(_png()).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    messages = ask(image, video_part(video_url()))
    billed = chat(http, messages).json()["usage"]
    counted = http.post("/v1/token/count", json={"model": VIDEO_MODEL, "messages": messages})
    assert counted.status_code == 200, counted.text
    data = counted.json()["data"]
    assert data["total_tokens"] == billed["prompt_tokens"]
    assert data["video_tokens"] == 3 * FRAME_TOKENS and data["image_tokens"] == IMAGE_TOKENS


def test_media_keep_their_order_across_images_and_videos(
    http: httpx.Client, server: LiveServer
) -> None:
    png = base64.b64encode(_png()).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    resp = chat(http, ask(video_part(video_url()), image))
    assert resp.status_code == 200, resp.text
    assert [m.kind for m in server.engine.requests[-1].prompt.media] == ["video", "image"]


def test_video_to_a_model_without_video_names_the_models_that_accept_it(
    http: httpx.Client,
) -> None:
    err = error(
        chat(http, ask(video_part(video_url())), IMAGE_MODEL), 400, "unsupported_content_type"
    )
    assert err["param"] == "messages[0].content[0].video_url"
    assert IMAGE_MODEL in err["message"]
    assert VIDEO_MODEL in err["message"] and SHORT_MODEL in err["message"]


def test_video_longer_than_the_catalogue_allows_is_400(http: httpx.Client) -> None:
    err = error(chat(http, ask(video_part(video_url())), SHORT_MODEL), 400, "video_too_long")
    assert err["param"] == "messages[0].content[0].video_url.url"
    assert "at most 2 s" in err["message"]


def test_video_bigger_than_the_catalogue_allows_is_400(http: httpx.Client) -> None:
    big = encode("MP4", seconds=1.0, size=(640, 480))
    assert len(big) > MAX_BYTES
    err = error(chat(http, ask(video_part(video_url(big))), SHORT_MODEL), 400, "video_too_large")
    assert "at most" in err["message"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (CLIP[: len(CLIP) // 2], "invalid_video"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(500), "invalid_video"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "unsupported_content_type"),
    ],
)
def test_broken_videos_are_400_never_500(http: httpx.Client, data: bytes, code: str) -> None:
    error(chat(http, ask(video_part(video_url(data)))), 400, code)


def test_bad_video_urls_are_400(http: httpx.Client) -> None:
    error(chat(http, ask(video_part("ftp://example.com/v.mp4"))), 400, "invalid_video_url")
    error(chat(http, ask(video_part("data:video/mp4;base64,!!!"))), 400, "invalid_video_url")
    error(chat(http, ask(video_part("http://127.0.0.1:9/v.mp4"))), 400, "media_fetch_failed")


def test_uploaded_video_is_used_through_stepfile(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    created = client.files.create(file=("clip.mp4", CLIP), purpose="storage")  # type: ignore[arg-type]
    assert created.bytes == len(CLIP)
    reply = client.chat.completions.create(
        model=VIDEO_MODEL,
        messages=ask(video_part(f"stepfile://{created.id}")),  # type: ignore[arg-type]
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert getattr(reply.usage.prompt_tokens_details, "video_tokens", None) == 3 * FRAME_TOKENS
    client.files.delete(created.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=VIDEO_MODEL,
            messages=ask(video_part(f"stepfile://{created.id}")),  # type: ignore[arg-type]
        )
    assert caught.value.code == "file_not_found"


def _png() -> bytes:
    from tests.storage.samples import image

    return image("PNG")
