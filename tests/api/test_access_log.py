"""One access line per request, with the fields operations need and nothing secret: never the
key, image bytes, a data URL or URL credentials; ``--log-format json`` gives one object a line."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.accounts import BODY, bearer, create_key, server
from vlmserve.api.logs import JsonFormatter


def _png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_access_lines_carry_operations_fields_and_no_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = create_key(tmp_path, "logged")
    data_url = _png_data_url()
    secret_url = "http://user:hunter2@127.0.0.1:9/cat.png?token=qwerty"
    srv, live = server(tmp_path, media={"allow_loopback": True})
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]
    with caplog.at_level(logging.INFO), srv, httpx.Client(base_url=live.base_url) as http:
        ok = http.post(
            "/v1/chat/completions",
            json={**BODY, "messages": [{"role": "user", "content": content}]},
            headers=bearer(key),
        )
        assert ok.status_code == 200
        bad = [{"type": "image_url", "image_url": {"url": secret_url}}]
        failed = http.post(
            "/v1/chat/completions",
            json={**BODY, "messages": [{"role": "user", "content": bad}]},
            headers=bearer(key),
        )
        assert failed.status_code == 400
        http.get("/v1/models?api_key=" + key)  # a key in a query string is not logged either
    access = [r for r in caplog.records if r.name == "vlmserve.access"]
    assert len(access) == 3
    first = access[0].access  # type: ignore[attr-defined]
    assert first["method"] == "POST" and first["path"] == "/v1/chat/completions"
    assert first["status"] == 200 and first["model"] == "step-1v-8k"
    assert first["key_name"] == "logged" and first["prompt_tokens"] > 0
    assert first["trace_id"] == ok.headers["x-trace-id"] and first["latency_ms"] > 0
    server_side = [r for r in caplog.records if r.name.startswith(("vlmserve", "uvicorn"))]
    everything = "".join(
        logging.Formatter().format(r) + JsonFormatter().format(r) for r in server_side
    )
    base64_part = data_url.split(",", 1)[1]
    for secret in (key, key[3:], base64_part[:40], "hunter2", "qwerty", "data:image"):
        assert secret not in everything


def test_json_format_is_one_parsable_object_per_access_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv, live = server(tmp_path)
    with caplog.at_level(logging.INFO), srv, httpx.Client(base_url=live.base_url) as http:
        http.post("/v1/chat/completions", json=BODY, headers=bearer("sk-admin-for-tests"))
    record = next(r for r in caplog.records if r.name == "vlmserve.access")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "info" and parsed["status"] == 200
    assert parsed["key_name"] == "admin-key-1" and parsed["completion_tokens"] == 2
