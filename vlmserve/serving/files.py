"""``FileService``: the Files API's use cases over ``storage.files.FileStore``.

An upload is checked before it is kept: purpose (only ``storage`` here), the owner's file count,
the content sniffed from its first bytes (images and videos only), its size (streamed to disk in
chunks, counted as it goes, cut at the limit), and for GIF/PNG/WebP that it is not an animation.
A ``url`` is downloaded by the media layer's one safe fetcher (``media.fetch.SafeFetcher``).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from vlmserve.errors import (
    InvalidRequestError,
    MediaError,
    PayloadTooLargeError,
    UnsupportedContentError,
)
from vlmserve.media.fetch import SafeFetcher
from vlmserve.media.sniff import SNIFF_BYTES, check_still_upload, sniff_upload
from vlmserve.protocol.files import FileDeleted, FileList, FileObject
from vlmserve.settings import StorageSettings
from vlmserve.storage.files import FileRecord, FileStore, Order, Upload, too_many_files

PURPOSES = ("storage",)
CHUNK_BYTES = 1024 * 1024
MAX_FILENAME = 255
_MB = 1024 * 1024
_SEPARATORS = re.compile(r"[\\/]")


class ByteStream(Protocol):
    """An upload's body, read in chunks (Starlette's ``UploadFile`` is one)."""

    async def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes; ``b""`` at the end."""
        ...


@dataclass(frozen=True, slots=True)
class FileContent:
    content_type: str
    num_bytes: int
    filename: str
    file: BinaryIO  # open; the caller reads and closes it


class FileService:
    def __init__(self, store: FileStore, fetcher: SafeFetcher, settings: StorageSettings) -> None:
        self._store = store
        self._fetcher = fetcher
        self._settings = settings

    async def upload(
        self,
        owner: str,
        purpose: str | None,
        *,
        file: ByteStream | None = None,
        filename: str | None = None,
        url: str | None = None,
    ) -> FileObject:
        """Store ``file`` (multipart), else download ``url``; ``file`` wins if both are given."""
        _check_purpose(purpose)
        if file is None and not url:
            raise InvalidRequestError(
                "Send the file as the multipart field 'file', or a URL to download as the "
                "field 'url'.",
                param="file",
            )
        await self._check_count(owner)
        if file is not None:
            record = await self._keep(owner, "file", clean_filename(filename), file)
        else:
            assert url is not None
            record = await self._download(owner, url)
        return file_object(record)

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = "desc",
        purpose: str | None = None,
    ) -> FileList:
        page = await self._store.list(owner, after=after, limit=limit, order=order, purpose=purpose)
        data = [file_object(r) for r in page.records]
        first, last = (data[0].id, data[-1].id) if data else (None, None)
        return FileList(data=data, has_more=page.has_more, first_id=first, last_id=last)

    async def retrieve(self, owner: str, file_id: str) -> FileObject:
        return file_object(await self._store.get(file_id, owner))

    async def content(self, owner: str, file_id: str) -> FileContent:
        record, file = await self._store.open_stream(file_id, owner)
        return FileContent(record.content_type, record.num_bytes, record.filename, file)

    async def delete(self, owner: str, file_id: str) -> FileDeleted:
        record = await self._store.delete(file_id, owner)
        return FileDeleted(id=record.id)

    async def close(self) -> None:
        """Close the store (after ``MediaIntake``, which reads it, is closed)."""
        await self._store.close()

    async def _check_count(self, owner: str) -> None:
        # Checked again under the write lock at commit; this one spares reading a doomed upload.
        if await self._store.count(owner) >= self._settings.max_files_per_owner:
            raise too_many_files(self._settings.max_files_per_owner)

    async def _download(self, owner: str, url: str) -> FileRecord:
        where = "the file at 'url'"
        try:
            data = await self._fetcher.fetch(
                url,
                "url",
                _DownloadCap(self._settings.max_upload_bytes, where),
                lambda head: _sniff_prefix(head, where),
            )
        except (MediaError, UnsupportedContentError, PayloadTooLargeError) as exc:
            exc.param = "url"
            raise
        return await self._keep(owner, "url", filename_of(url), _BytesStream(data))

    async def _keep(self, owner: str, param: str, filename: str, body: ByteStream) -> FileRecord:
        where = "the uploaded file" if param == "file" else "the file at 'url'"
        try:
            head = await _read_head(body)
            sniffed = sniff_upload(head, where)
            async with self._store.upload() as upload:
                await self._write_all(upload, head, body, where)
                await asyncio.to_thread(check_still_upload, upload.path, sniffed, where)
                return await upload.commit(
                    owner=owner,
                    filename=filename,
                    purpose="storage",
                    content_type=sniffed.content_type,
                )
        except (MediaError, UnsupportedContentError, PayloadTooLargeError) as exc:
            exc.param = param
            raise

    async def _write_all(self, upload: Upload, head: bytes, body: ByteStream, where: str) -> None:
        limit = self._settings.max_upload_bytes
        chunk = head
        while chunk:
            if upload.num_bytes + len(chunk) > limit:
                raise _too_large(where, limit)
            await upload.write(chunk)
            chunk = await body.read(CHUNK_BYTES)


class _DownloadCap:
    """``fetch.ByteBudget`` for one download: the upload size limit."""

    def __init__(self, limit: int, where: str) -> None:
        self._limit, self._where = limit, where
        self._received = 0

    def check(self, num_bytes: int) -> None:
        if num_bytes > self._limit:
            raise _too_large(self._where, self._limit)

    def take(self, num_bytes: int) -> None:
        self._received += num_bytes
        self.check(self._received)


class _BytesStream:
    """A downloaded body as a ``ByteStream`` (the fetcher returns it whole)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    async def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos : end])
        self._pos += len(chunk)
        return chunk


def file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.num_bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
    )


def clean_filename(name: str | None) -> str:
    """The last path component, printable characters only, at most 255; "upload" if empty."""
    base = _SEPARATORS.split(name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:MAX_FILENAME] or "upload"


def filename_of(url: str) -> str:
    return clean_filename(unquote(urlsplit(url).path))


def _check_purpose(purpose: str | None) -> None:
    if purpose in PURPOSES:
        return
    shown = f"purpose '{purpose}' is not supported" if purpose else "purpose is required"
    raise InvalidRequestError(
        f"{shown}: this server stores files with purpose=storage only (images and videos to "
        "reference in chat as stepfile://FILE_ID).",
        param="purpose",
    )


async def _read_head(body: ByteStream) -> bytes:
    """The first ``SNIFF_BYTES`` bytes (fewer only at the end of the body)."""
    head = b""
    while len(head) < SNIFF_BYTES:
        chunk = await body.read(SNIFF_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _sniff_prefix(head: bytes, where: str) -> None:
    sniff_upload(head, where, complete=False)


def _too_large(where: str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{where} is larger than {limit / _MB:.4g} MB, the most one file may have. Split a "
        "long video into shorter pieces (e.g. with ffmpeg) or compress it, and upload those."
    )
