"""Helpers for the keys / limits / ledger / metrics tests: a fake server over a temp data dir."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import LiveServer, ThreadedServer, start_fake_server
from tests.fakes import FakeEngine
from vlmserve.settings import Settings
from vlmserve.storage.keys import KeyStore

BODY: dict[str, Any] = {"model": "step-1v-8k", "messages": [{"role": "user", "content": "hi"}]}
ADMIN = "sk-admin-for-tests"


def server(
    data_dir: Path, engine: FakeEngine | None = None, **layers: Any
) -> tuple[ThreadedServer, LiveServer]:
    server_layer = {"admin_api_keys": (ADMIN,), **layers.pop("server", {})}
    storage = {"data_dir": data_dir}
    settings = Settings(server=server_layer, storage=storage, **layers)
    return start_fake_server(settings, engine or FakeEngine())


def create_key(data_dir: Path, name: str, **options: Any) -> str:
    async def create() -> str:
        store = KeyStore.at(data_dir)
        try:
            return (await store.create(name, **options))[1]
        finally:
            await store.db.close()

    return asyncio.run(create())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
