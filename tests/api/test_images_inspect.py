"""``POST /v1/images/inspect`` (the playground's "what the model sees"), on a fake engine."""

from __future__ import annotations

import httpx
from PIL import Image

from tests.api.test_image_limits import data_url
from tests.fakes import IMAGE_TOKENS

MODEL = "step-1v-8k"


def inspect(http: httpx.Client, url: str, **image: object) -> httpx.Response:
    return http.post(
        "/v1/images/inspect", json={"model": MODEL, "image_url": {"url": url, **image}}
    )


def test_inspection_reports_the_size_chat_uses_and_the_tokens_chat_bills(
    http: httpx.Client,
) -> None:
    url = data_url(Image.new("RGB", (3000, 1000), (10, 200, 30)))
    resp = inspect(http, url, detail="low")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "image.inspection" and body["model"] == MODEL
    assert body["format"] == "PNG" and body["original_size"] == [3000, 1000]
    assert body["size"] == [512, 171]  # the fake engine's detail=low edge is 512
    assert body["detail"] == "low" and body["tokens"] == IMAGE_TOKENS
    content = [{"type": "image_url", "image_url": {"url": url, "detail": "low"}}]
    counted = http.post(
        "/v1/token/count", json={"model": MODEL, "messages": [{"role": "user", "content": content}]}
    )
    assert counted.json()["data"]["image_tokens"] == body["tokens"]


def test_detail_auto_resolves_to_the_models_default(http: httpx.Client) -> None:
    body = inspect(http, data_url(Image.new("RGB", (3000, 1000)))).json()
    assert body["detail"] == "low"  # the seed catalogue's default
    high = inspect(http, data_url(Image.new("RGB", (3000, 1000))), detail="high").json()
    assert high["size"] == [2048, 683]


def test_an_image_chat_would_refuse_is_refused_with_the_same_error(http: httpx.Client) -> None:
    resp = inspect(http, data_url(Image.new("RGB", (5000, 20))))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "image_too_large" and "5000x20" in error["message"]


def test_unknown_model_and_missing_image_are_400(http: httpx.Client) -> None:
    resp = http.post("/v1/images/inspect", json={"model": "nope", "image_url": {"url": "data:,"}})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_not_found"
    resp = http.post("/v1/images/inspect", json={"model": MODEL})
    assert resp.status_code == 400
