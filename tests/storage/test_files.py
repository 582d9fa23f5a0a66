"""``FileStore``: owners are isolated, blobs are shared and freed, limits hold, nothing is left
half-written."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from vlmserve.errors import InvalidRequestError, NotFoundError
from vlmserve.storage.files import FileRecord, FileStore

T = TypeVar("T")
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg bytes " * 100


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def put(store: FileStore, owner: str, data: bytes = JPEG, name: str = "a.jpg") -> FileRecord:
    async with store.upload() as upload:
        for i in range(0, len(data), 100):
            await upload.write(data[i : i + 100])
        return await upload.commit(
            owner=owner, filename=name, purpose="storage", content_type="image/jpeg"
        )


def blobs(root: Path) -> list[Path]:
    return [p for p in (root / "files" / "blobs").rglob("*") if p.is_file()]


def temps(root: Path) -> list[Path]:
    return list((root / "files" / "tmp").iterdir())


def test_upload_is_hashed_and_stored_under_its_sha256(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path)
        record = await put(store, "alice")
        assert record.sha256 == hashlib.sha256(JPEG).hexdigest()
        assert record.num_bytes == len(JPEG)
        assert record.id.startswith("file-") and len(record.id) == 29
        assert await store.open(record.id, "alice") == JPEG
        assert blobs(tmp_path) == [tmp_path / "files/blobs" / record.sha256[:2] / record.sha256]
        assert temps(tmp_path) == []
        await store.close()

    run(scenario())


def test_owner_cannot_see_read_use_or_delete_another_owners_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path)
        record = await put(store, "alice")
        with pytest.raises(NotFoundError):
            await store.get(record.id, "bob")
        with pytest.raises(NotFoundError):
            await store.open(record.id, "bob")  # what stepfile:// resolution calls
        with pytest.raises(NotFoundError):
            await store.open_stream(record.id, "bob")
        with pytest.raises(NotFoundError):
            await store.delete(record.id, "bob")
        with pytest.raises(NotFoundError):  # "" (no auth) is an owner like any other
            await store.get(record.id, "")
        assert (await store.list("bob")).records == ()
        assert await store.count("bob") == 0
        assert await store.get(record.id, "alice") == record  # still there
        await store.close()

    run(scenario())


def test_not_found_message_does_not_reveal_that_the_id_exists(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        store = FileStore(tmp_path)
        record = await put(store, "alice")
        messages = []
        for file_id in (record.id, "file-doesnotexist"):
            with pytest.raises(NotFoundError) as caught:
                await store.get(file_id, "bob")
            messages.append(caught.value.message.replace(file_id, "ID"))
        await store.close()
        return messages[0], messages[1]

    first, second = run(scenario())
    assert first == second


def test_shared_blob_is_kept_until_the_last_row_using_it_is_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path)
        first = await put(store, "alice")
        second = await put(store, "bob")  # same bytes, another owner
        third = await put(store, "alice", name="copy.jpg")
        assert first.sha256 == second.sha256 == third.sha256
        assert len(blobs(tmp_path)) == 1
        await store.delete(first.id, "alice")
        await store.delete(second.id, "bob")
        assert len(blobs(tmp_path)) == 1
        assert await store.open(third.id, "alice") == JPEG
        await store.delete(third.id, "alice")
        assert blobs(tmp_path) == []
        with pytest.raises(NotFoundError):
            await store.delete(third.id, "alice")
        await store.close()

    run(scenario())


def test_count_limit_is_checked_when_the_upload_commits(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path, max_files_per_owner=2)
        kept = [await put(store, "alice", JPEG + bytes([i])) for i in range(2)]
        with pytest.raises(InvalidRequestError, match="2 files") as caught:
            await put(store, "alice", JPEG + b"\x09")
        assert caught.value.status == 400 and caught.value.code == "too_many_files"
        assert len(blobs(tmp_path)) == 2 and temps(tmp_path) == []
        await put(store, "bob")  # per owner
        await store.delete(kept[0].id, "alice")
        await put(store, "alice", JPEG + b"\x09")
        assert await store.count("alice") == 2
        await store.close()

    run(scenario())


def test_upload_abandoned_by_an_error_leaves_no_temp_file_and_no_row(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path)
        with pytest.raises(RuntimeError):
            async with store.upload() as upload:
                await upload.write(JPEG)
                assert len(temps(tmp_path)) == 1
                raise RuntimeError("client went away")
        assert temps(tmp_path) == [] and blobs(tmp_path) == []
        assert (await store.list("")).records == ()
        await store.close()

    run(scenario())


def test_list_is_newest_first_and_pages_with_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path)
        ids = [(await put(store, "alice", JPEG + bytes([i]))).id for i in range(5)]
        await put(store, "bob")
        page = await store.list("alice", limit=2)
        assert [r.id for r in page.records] == ids[::-1][:2] and page.has_more
        page = await store.list("alice", after=page.records[-1].id, limit=2)
        assert [r.id for r in page.records] == ids[::-1][2:4] and page.has_more
        page = await store.list("alice", after=page.records[-1].id, limit=2)
        assert [r.id for r in page.records] == ids[:1] and not page.has_more
        oldest_first = await store.list("alice", order="asc")
        assert [r.id for r in oldest_first.records] == ids
        with pytest.raises(InvalidRequestError):
            await store.list("bob", after=ids[0])  # another owner's id is no cursor
        await store.close()

    run(scenario())


def test_store_touches_no_disk_until_first_used(tmp_path: Path) -> None:
    root = tmp_path / "data"
    store = FileStore(root)
    assert not root.exists()
    run(store.close())
    assert not root.exists()


def test_unused_blob_left_by_a_crash_after_rename_is_removed_at_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(tmp_path)
        kept = await put(store, "alice")
        await store.close()
        digest = hashlib.sha256(b"orphan").hexdigest()
        orphan = tmp_path / "files" / "blobs" / digest[:2] / digest
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"orphan")  # renamed into place, row never inserted
        store = FileStore(tmp_path)
        assert await store.open(kept.id, "alice") == JPEG
        assert not orphan.exists()
        await store.close()

    run(scenario())


def test_start_up_does_not_delete_an_upload_another_store_is_writing(tmp_path: Path) -> None:
    async def scenario() -> None:
        writer = FileStore(tmp_path)
        async with writer.upload() as upload:
            await upload.write(JPEG)
            other = FileStore(tmp_path)  # e.g. a second server process starting
            assert await other.count("alice") == 0
            assert temps(tmp_path) == [upload.path]
            record = await upload.commit(
                owner="alice", filename="a.jpg", purpose="storage", content_type="image/jpeg"
            )
            assert await other.open(record.id, "alice") == JPEG
            await other.close()
        await writer.close()

    run(scenario())
