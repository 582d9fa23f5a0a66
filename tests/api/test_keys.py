"""Keys as data over HTTP: a stored key works, names the owner by its id, stops when revoked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.api.accounts import ADMIN, BODY, bearer, create_key, server
from vlmserve.storage.keys import KeyStore


def _revoke(data_dir: Path, name: str) -> None:
    async def revoke() -> None:
        store = KeyStore.at(data_dir)
        try:
            await store.revoke(name)
        finally:
            await store.db.close()

    asyncio.run(revoke())


def test_stored_key_works_owns_its_files_by_id_and_stops_when_revoked(tmp_path: Path) -> None:
    key = create_key(tmp_path, "alice")
    srv, live = server(tmp_path, limits={"key_refresh_s": 0.2})
    with srv, httpx.Client(base_url=live.base_url) as http:
        assert http.post("/v1/chat/completions", json=BODY).status_code == 401
        reply = http.post("/v1/chat/completions", json=BODY, headers=bearer(key))
        assert reply.status_code == 200
        assert live.engine.requests[-1].tenant.startswith("key_")  # the id, not the key
        assert key not in live.engine.requests[-1].tenant
        late = create_key(tmp_path, "bob")  # made while the server runs: works at once
        assert http.get("/v1/models", headers=bearer(late)).status_code == 200
        _revoke(tmp_path, "alice")
        deadline = time.monotonic() + 5
        while http.get("/v1/models", headers=bearer(key)).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key still works after 5 s"
            time.sleep(0.05)


def test_settings_keys_keep_working_beside_stored_ones(tmp_path: Path) -> None:
    create_key(tmp_path, "stored")
    srv, live = server(tmp_path, server={"api_keys": ("sk-from-settings",)})
    with srv, httpx.Client(base_url=live.base_url) as http:
        assert http.get("/v1/models", headers=bearer("sk-from-settings")).status_code == 200
        assert http.get("/v1/models", headers=bearer(ADMIN)).status_code == 200


def test_usage_endpoint_needs_an_admin_key(tmp_path: Path) -> None:
    key = create_key(tmp_path, "user")
    srv, live = server(tmp_path)
    with srv, httpx.Client(base_url=live.base_url) as http:
        denied = http.get("/v1/usage", headers=bearer(key))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        assert http.get("/v1/usage", headers=bearer(ADMIN)).status_code == 200
        bad = http.get("/v1/usage", params={"since": "yesterday"}, headers=bearer(ADMIN))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
