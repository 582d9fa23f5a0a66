"""API keys: when configured, every /v1 call needs a valid bearer key; health stays open."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import start_fake_server
from tests.fakes import FakeEngine
from vlmserve.settings import Settings

BODY = {"model": "step-1v-8k", "messages": [{"role": "user", "content": "hi"}]}


def test_keys_are_enforced() -> None:
    server, live = start_fake_server(Settings(server={"api_keys": ("sk-good",)}), FakeEngine())
    with server, httpx.Client(base_url=live.base_url) as http:
        missing = http.post("/v1/chat/completions", json=BODY)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        wrong = http.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer sk-bad"}
        )
        assert wrong.status_code == 401
        assert http.get("/v1/models").status_code == 401
        assert http.get("/healthz").status_code == 200
        client = openai.OpenAI(base_url=live.api, api_key="sk-good", max_retries=0)
        reply = client.chat.completions.create(**BODY)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "echo: hi"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=live.api, api_key="sk-bad", max_retries=0).models.list()
