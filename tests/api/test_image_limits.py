"""Image rules through the API (issue 3): every limit is a 4xx naming the image, never a 500."""

from __future__ import annotations

import base64
import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer, free_port, start_fake_server
from tests.fakes import IMAGE_TOKENS, FakeEngine
from vlmserve.settings import Settings

MODEL = "step-1v-8k"  # 50 images


def data_url(im: Image.Image, fmt: str = "PNG", mime: str = "image/png") -> str:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def small_png(color: tuple[int, int, int] = (200, 10, 10)) -> str:
    return data_url(Image.new("RGB", (32, 24), color))


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def chat(
    http: httpx.Client, *parts: dict, model: str = MODEL, history: list | None = None
) -> httpx.Response:
    content = [*parts, {"type": "text", "text": "what is it"}]
    messages = [*(history or []), {"role": "user", "content": content}]
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages})


def error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    return err


def test_too_many_images_counts_the_history_and_says_what_to_do(http: httpx.Client) -> None:
    history = []
    for i in range(25):  # 25 earlier turns of 2 images each: the new turn's image is the 51st
        pair = [image_part(small_png((i, 0, 0))), image_part(small_png((0, i, 0)))]
        history += [
            {"role": "user", "content": [*pair, {"type": "text", "text": "and?"}]},
            {"role": "assistant", "content": "ok"},
        ]
    resp = chat(http, image_part(small_png()), history=history)
    err = error(resp, 400, "too_many_images")
    assert err["param"] == "messages"
    assert "50" in err["message"] and "description" in err["message"]


def test_images_over_20_mb_in_total_are_413_naming_the_image() -> None:
    # incompressible 2.2 MB PNGs; the tenth pushes the request's images over 20 MB
    noise = Image.frombytes("RGB", (860, 860), os.urandom(860 * 860 * 3))
    part = image_part(data_url(noise))
    server, live = start_fake_server(Settings(), FakeEngine())  # the default 64 MB body cap
    with server, httpx.Client(base_url=live.base_url, timeout=60) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": [part] * 10}]},
        )
    err = error(resp, 413, "payload_too_large")
    assert err["param"] == "messages[0].content[9].image_url.url"


def test_image_over_4096_px_is_400_naming_its_size(http: httpx.Client) -> None:
    resp = chat(http, image_part(data_url(Image.new("RGB", (5000, 20)))))
    err = error(resp, 400, "image_too_large")
    assert "5000" in err["message"]
    assert err["param"] == "messages[0].content[0].image_url.url"


def test_oversized_image_is_downscaled_when_the_setting_says_so() -> None:
    settings = Settings(media={"downscale_oversized": True})
    server, live = start_fake_server(settings, FakeEngine())
    with server, httpx.Client(base_url=live.base_url, timeout=30) as http:
        resp = chat(http, image_part(data_url(Image.new("RGB", (5000, 20)))))
        assert resp.status_code == 200, resp.text
        sent = live.engine.requests[-1].prompt.media[0].frames[0]
        assert max(sent.size) <= 4096


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433:{port}/cat.png",
        "http://[::ffff:127.0.0.1]:{port}/cat.png",
        "http://10.0.0.1/cat.png",
    ],
)
def test_private_addresses_are_refused_by_default_and_never_contacted(url: str) -> None:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    target = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    server, live = start_fake_server(Settings(), FakeEngine())  # default settings: no loopback
    try:
        with server, httpx.Client(base_url=live.base_url, timeout=30) as http:
            resp = chat(http, image_part(url.format(port=port)))
            err = error(resp, 400, "media_fetch_failed")
            assert err["param"] == "messages[0].content[0].image_url.url"
    finally:
        target.shutdown()
        target.server_close()
    assert hits == []


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (data_url(Image.new("RGB", (8, 8)), "BMP", "image/bmp"), "unsupported_content_type"),
        (
            "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode(),
            "unsupported_content_type",
        ),
        ("data:image/png;base64,%%%notbase64", "invalid_image_url"),
    ],
)
def test_bad_image_data_is_a_400_with_its_position(http: httpx.Client, url: str, code: str) -> None:
    err = error(chat(http, image_part(url)), 400, code)
    assert err["param"] == "messages[0].content[0].image_url.url"


def test_animated_gif_is_unsupported(http: httpx.Client) -> None:
    frames = [Image.new("RGB", (8, 8), (80 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    url = "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()
    err = error(chat(http, image_part(url)), 400, "unsupported_content_type")
    assert "animated" in err["message"].lower()


def test_truncated_jpeg_is_invalid_image(http: httpx.Client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()[:200]).decode()
    error(chat(http, image_part(url)), 400, "invalid_image")


def test_same_image_in_two_turns_has_one_identity_and_counts_match(
    http: httpx.Client, fake_server: LiveServer
) -> None:
    url = small_png((9, 9, 9))
    history = [
        {"role": "user", "content": [image_part(url), {"type": "text", "text": "a"}]},
        {"role": "assistant", "content": "b"},
    ]
    resp = chat(http, image_part(url), history=history)
    assert resp.status_code == 200, resp.text
    media = fake_server.engine.requests[-1].prompt.media
    assert len(media) == 2 and media[0].identity == media[1].identity
    assert resp.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 2 * IMAGE_TOKENS
    messages = [
        *history,
        {"role": "user", "content": [image_part(url), {"type": "text", "text": "what is it"}]},
    ]
    counted = http.post("/v1/token/count", json={"model": MODEL, "messages": messages}).json()[
        "data"
    ]
    assert counted["total_tokens"] == resp.json()["usage"]["prompt_tokens"]
    assert counted["image_tokens"] == 2 * IMAGE_TOKENS


def test_loopback_fetch_works_when_allowed(http: httpx.Client, fake_server: LiveServer) -> None:
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 255, 0)).save(png, "PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")  # wrong on purpose: the bytes decide
            self.send_header("Content-Length", str(len(png.getvalue())))
            self.end_headers()
            self.wfile.write(png.getvalue())

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    target = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    try:
        resp = chat(http, image_part(f"http://127.0.0.1:{port}/g.png"))
    finally:
        target.shutdown()
        target.server_close()
    assert resp.status_code == 200, resp.text
    frame = fake_server.engine.requests[-1].prompt.media[0].frames[0]
    assert frame.getpixel((0, 0)) == (0, 255, 0)
