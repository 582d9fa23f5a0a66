"""API keys as rows: created once, listed without the key, revoked; only the hash on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vlmserve.errors import InvalidRequestError, NotFoundError
from vlmserve.storage.keys import KeyStore, hash_key


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _lifecycle(data_dir: Path) -> tuple[str, list[str], list[str], dict[str, str]]:
    store = KeyStore.at(data_dir)
    try:
        _record, key = await store.create("alice", tier="V1", quota_tokens=1000)
        live = await store.live_by_hash()
        names_live = [r.name for r in await store.list()]
        await store.revoke("alice")
        names_after = [r.name for r in await store.list()]
        return key, names_live, names_after, {h: r.id for h, r in live.items()}
    finally:
        await store.db.close()


def test_key_is_stored_only_as_its_hash(tmp_path: Path) -> None:
    key, live, after, by_hash = _run(_lifecycle(tmp_path))
    assert key.startswith("sk-") and len(key) >= 40
    assert live == ["alice"] and after == []
    assert hash_key(key) in by_hash and by_hash[hash_key(key)].startswith("key_")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert key.encode() not in on_disk
    assert key[3:].encode() not in on_disk  # not even without its prefix
    assert hash_key(key).encode() in on_disk  # the hash is what is there


def test_two_live_keys_cannot_share_a_name_but_a_revoked_name_is_reusable(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = KeyStore.at(tmp_path)
        try:
            await store.create("bot")
            with pytest.raises(InvalidRequestError, match="bot"):
                await store.create("bot")
            await store.revoke("bot")
            await store.create("bot")
            assert [r.name for r in await store.list(include_revoked=True)] == ["bot", "bot"]
            with pytest.raises(NotFoundError):
                await store.revoke("nobody")
        finally:
            await store.db.close()

    _run(scenario())


def test_keys_are_unique_per_creation(tmp_path: Path) -> None:
    async def scenario() -> set[str]:
        store = KeyStore.at(tmp_path)
        try:
            return {(await store.create(f"k{i}"))[1] for i in range(20)}
        finally:
            await store.db.close()

    assert len(_run(scenario())) == 20
