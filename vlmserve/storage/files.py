"""``FileStore``: uploaded files as rows in SQLite (one per upload, each with its owner) over
content-addressed blobs.

Every read and write names an owner and sees only that owner's rows: another owner's file is
indistinguishable from one that does not exist. A blob is shared by all rows with the same bytes
and removed with the last of them (counted by a query, inside the delete's write transaction).

``FileStore`` satisfies ``media.sources.FileSource`` structurally (``open``); storage does not
import media, ``api/services.py`` joins the two. Nothing touches the disk until the first call:
then the directories are created, the database migrated, abandoned uploads deleted, and blobs no
row uses removed (a crash between the blob rename and the row insert leaves one).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import string
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

from vlmserve.errors import InternalError, InvalidRequestError, NotFoundError
from vlmserve.settings import StorageSettings
from vlmserve.storage.blobs import BlobDir, TempBlob
from vlmserve.storage.db import Database, transaction

log = logging.getLogger("vlmserve.storage")

Order = Literal["asc", "desc"]
ID_PREFIX = "file-"
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24  # 143 random bits
_COLUMNS = "id, owner, bytes, created_at, filename, purpose, content_type, sha256"


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner: str
    num_bytes: int
    created_at: int  # Unix seconds
    filename: str
    purpose: str
    content_type: str  # sniffed from the bytes at upload
    sha256: str


@dataclass(frozen=True, slots=True)
class FilePage:
    records: tuple[FileRecord, ...]
    has_more: bool


def new_file_id() -> str:
    return ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


class Upload:
    """One upload in progress (from ``FileStore.upload``): ``write`` the bytes, then ``commit``."""

    def __init__(self, store: FileStore, temp: TempBlob) -> None:
        self._store = store
        self._temp = temp
        self.committed = False

    @property
    def num_bytes(self) -> int:
        return self._temp.num_bytes

    @property
    def path(self) -> Path:
        """The temp file (complete once everything is written): for checks before ``commit``."""
        return self._temp.path

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._temp.write, data)

    async def commit(
        self, *, owner: str, filename: str, purpose: str, content_type: str
    ) -> FileRecord:
        """fsync, then, under the database's write lock: check the owner's file count, move the
        bytes to their blob and insert the row. Raises ``InvalidRequestError`` (too many files)."""
        assert not self.committed, "an upload commits once"
        digest = await asyncio.to_thread(self._temp.finish)
        record = FileRecord(
            new_file_id(),
            owner,
            self._temp.num_bytes,
            int(time.time()),
            filename,
            purpose,
            content_type,
            digest,
        )
        await self._store._db.run(partial(self._store._insert, self._temp, record))
        self.committed = True
        return record


class FileStore:
    def __init__(self, data_dir: Path, *, max_files_per_owner: int = 1000) -> None:
        root = data_dir.expanduser()
        self.max_files_per_owner = max_files_per_owner
        self._blobs = BlobDir(root / "files")
        self._db = Database(root / "vlmserve.db", on_open=self._startup)

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> FileStore:
        return cls(settings.data_dir, max_files_per_owner=settings.max_files_per_owner)

    @asynccontextmanager
    async def upload(self) -> AsyncIterator[Upload]:
        """A new upload; leaving the block without ``commit`` (an error, a cancelled request)
        deletes the partial bytes. A killed process leaves only a temp file, deleted at the
        next start-up."""
        await self._db.run(_nothing)  # start-up first: directories, clean-up
        temp = await asyncio.to_thread(self._blobs.new_temp)
        try:
            yield Upload(self, temp)
        finally:
            await asyncio.to_thread(temp.discard)

    async def get(self, file_id: str, owner: str) -> FileRecord:
        """Raises ``NotFoundError`` for an unknown id, or another owner's."""
        return await self._db.run(partial(_get, file_id, owner))

    async def count(self, owner: str) -> int:
        return await self._db.run(partial(_count, owner))

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = "desc",
        purpose: str | None = None,
    ) -> FilePage:
        """The owner's files in upload order (``desc``: newest first), from after ``after``."""
        query = partial(_list, owner, after, limit, order, purpose)
        return await self._db.run(query)

    async def delete(self, file_id: str, owner: str) -> FileRecord:
        """Delete the row; the blob too when no other row uses it. Raises ``NotFoundError``."""
        return await self._db.run(partial(self._delete, file_id, owner))

    async def open(self, file_id: str, owner: str) -> bytes:
        """The whole content (``media.sources.FileSource``). Raises ``NotFoundError``."""
        _, file = await self.open_stream(file_id, owner)
        return await asyncio.to_thread(_read_all, file)

    async def open_stream(self, file_id: str, owner: str) -> tuple[FileRecord, BinaryIO]:
        """The record and an open binary file of its content (the caller closes it). Opened
        with the lookup, so a concurrent delete cannot take the bytes away mid read."""
        return await self._db.run(partial(self._open_blob, file_id, owner))

    async def close(self) -> None:
        await self._db.close()

    # Everything below runs on the database thread.

    def _startup(self, conn: sqlite3.Connection) -> None:
        try:
            removed = self._blobs.prepare()
        except OSError as exc:
            raise InternalError(f"cannot use the file directory {self._blobs.root}: {exc}") from exc
        if removed:
            log.warning("deleted %d incomplete upload(s) left by a crash", removed)
        with transaction(conn):
            self._reconcile(conn)

    def _reconcile(self, conn: sqlite3.Connection) -> None:
        on_disk = self._blobs.digests()
        used = {row[0] for row in conn.execute("SELECT DISTINCT sha256 FROM files")}
        for digest in on_disk - used:
            self._blobs.remove(digest)
        missing = used - on_disk
        if missing:  # kept: reading them is a 500 that names the problem; deleting them works
            log.error("%d stored file(s) have no bytes in %s", len(missing), self._blobs.blobs)

    def _insert(self, temp: TempBlob, record: FileRecord, conn: sqlite3.Connection) -> None:
        with transaction(conn):
            if _count(record.owner, conn) >= self.max_files_per_owner:
                raise too_many_files(self.max_files_per_owner)
            created = self._blobs.install(temp, record.sha256)
            try:
                _insert_row(record, conn)
            except BaseException:
                if created:  # nobody else uses a blob this upload created
                    self._blobs.remove(record.sha256)
                raise

    def _delete(self, file_id: str, owner: str, conn: sqlite3.Connection) -> FileRecord:
        with transaction(conn):
            record = _get(file_id, owner, conn)
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
            (users,) = conn.execute(
                "SELECT count(*) FROM files WHERE sha256 = ?", (record.sha256,)
            ).fetchone()
            if users == 0:  # unlinked under the write lock: no upload can claim it meanwhile
                self._blobs.remove(record.sha256)
        return record

    def _open_blob(
        self, file_id: str, owner: str, conn: sqlite3.Connection
    ) -> tuple[FileRecord, BinaryIO]:
        record = _get(file_id, owner, conn)
        try:
            return record, open(self._blobs.path(record.sha256), "rb")
        except FileNotFoundError:
            raise InternalError(
                f"the bytes of file {file_id} are missing from {self._blobs.blobs}"
            ) from None


def too_many_files(limit: int) -> InvalidRequestError:
    # 400, not 429: retrying cannot succeed until files are deleted (and the SDKs retry 429s).
    return InvalidRequestError(
        f"You already have {limit} files, the most this server stores per account. Delete "
        "files you no longer need (DELETE /v1/files/{file_id}) and upload again.",
        param="file",
        code="too_many_files",
    )


def not_found(file_id: str) -> NotFoundError:
    return NotFoundError(
        f"No file with id '{file_id}'. List your files with GET /v1/files.",
        param="file_id",
        code="file_not_found",
    )


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _row(row: tuple[str, str, int, int, str, str, str, str]) -> FileRecord:
    return FileRecord(*row)


def _get(file_id: str, owner: str, conn: sqlite3.Connection) -> FileRecord:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM files WHERE id = ? AND owner = ?", (file_id, owner)
    ).fetchone()
    if row is None:
        raise not_found(file_id)
    return _row(row)


def _insert_row(record: FileRecord, conn: sqlite3.Connection) -> None:
    conn.execute(
        f"INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.id,
            record.owner,
            record.num_bytes,
            record.created_at,
            record.filename,
            record.purpose,
            record.content_type,
            record.sha256,
        ),
    )


def _count(owner: str, conn: sqlite3.Connection) -> int:
    (num,) = conn.execute("SELECT count(*) FROM files WHERE owner = ?", (owner,)).fetchone()
    return int(num)


def _list(
    owner: str,
    after: str | None,
    limit: int,
    order: Order,
    purpose: str | None,
    conn: sqlite3.Connection,
) -> FilePage:
    where, args = ["owner = ?"], [owner]
    if purpose is not None:
        where.append("purpose = ?")
        args.append(purpose)
    if after is not None:
        cursor = conn.execute(
            "SELECT seq FROM files WHERE id = ? AND owner = ?", (after, owner)
        ).fetchone()
        if cursor is None:
            raise InvalidRequestError(
                f"after='{after}' is not one of your files; pass the id of the last file of "
                "the previous page",
                param="after",
            )
        where.append("seq < ?" if order == "desc" else "seq > ?")
        args.append(cursor[0])
    direction = "DESC" if order == "desc" else "ASC"
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM files WHERE {' AND '.join(where)} "
        f"ORDER BY seq {direction} LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    return FilePage(tuple(_row(r) for r in rows[:limit]), has_more=len(rows) > limit)


def _read_all(file: BinaryIO) -> bytes:
    with file:
        return file.read()
