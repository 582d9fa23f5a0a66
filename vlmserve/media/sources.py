"""Where an image comes from: parse ``image_url.url`` into a source, decode data URLs strictly.

Three kinds of source: RFC 2397 ``data:`` URLs (base64 only), ``http(s):`` URLs (fetched by
``fetch.SafeFetcher``), and ``stepfile://ID`` (uploads, read through the ``FileSource`` Protocol
that ``storage.files`` satisfies; ``api/app.py`` joins the two).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from vlmserve.errors import MediaError, UnsupportedContentError

try:  # SIMD base64, 10-15x faster than binascii on a multi-MB photo; strict when validate=True
    from pybase64 import b64decode as _fast_b64decode
except ImportError:  # pragma: no cover - the stdlib decoder is equally strict, only slower
    _fast_b64decode = None  # type: ignore[assignment]

# MIME types a data URL may declare; the bytes decide the real format (image.sniff_format).
DATA_URL_MIME_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp"})
VIDEO_DATA_URL_MIME_TYPES = frozenset(
    {"video/mp4", "video/quicktime", "video/x-matroska", "video/webm"}
    | {"video/mkv", "video/matroska", "video/mov", "video/x-m4v", "application/octet-stream"}
)
Kind = Literal["image", "video"]
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_STEPFILE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_MAX_HEADER = 512  # "data:image/png;name=...;base64," never needs more


class FileSource(Protocol):
    """Uploaded files, as ``media`` needs them (``storage.files.FileStore`` satisfies it).

    ``open`` returns the whole content of the file ``file_id`` if it exists and belongs to
    ``owner`` (matched exactly: "" is the one owner when authentication is off). It raises
    ``LookupError`` (or ``vlmserve.errors.NotFoundError``) when the id is unknown or belongs to
    someone else; media turns that into a 400 naming the part. It must not block the event loop.
    """

    async def open(self, file_id: str, owner: str) -> bytes: ...


class StoredFile(Protocol):
    """What media needs of a stored file's record (``storage.files.FileRecord`` satisfies it)."""

    @property
    def sha256(self) -> str: ...

    @property
    def num_bytes(self) -> int: ...


@runtime_checkable
class StreamingFileSource(FileSource, Protocol):
    """A ``FileSource`` that can also hand out an open file, so a large video is decoded from
    disk instead of being read into memory, and is cached by its content hash without reading it.

    ``open_stream`` raises like ``open``; the caller closes the file it returns.
    """

    async def open_stream(self, file_id: str, owner: str) -> tuple[StoredFile, BinaryIO]: ...


@dataclass(frozen=True, slots=True)
class DataSource:
    """A data URL, kept whole: the cache keys on the text without copying or decoding it."""

    mime: str
    url: str
    start: int  # index of the base64 payload in ``url``

    @property
    def payload(self) -> str:
        return self.url[self.start :]

    @property
    def num_bytes(self) -> int:
        """Length of the decoded bytes, computed from the text alone."""
        length = len(self.url) - self.start
        padding = (self.url[-1] == "=") + (self.url[-2:] == "==") if length >= 2 else 0
        return length * 3 // 4 - padding


@dataclass(frozen=True, slots=True)
class HttpSource:
    url: str


@dataclass(frozen=True, slots=True)
class StepFileSource:
    file_id: str


Source = DataSource | HttpSource | StepFileSource


def parse_source(url: str, where: str, kind: Kind = "image") -> Source:
    """Classify ``url``; ``where`` names it in errors ("image 2 (messages[0].content[1]...)")."""
    scheme = url[: url.find(":")].lower() if ":" in url[:16] else ""
    if scheme == "data":
        return parse_data_url(url, where, kind)
    if scheme in ("http", "https"):
        return HttpSource(url)
    if scheme == "stepfile":
        return _parse_stepfile(url, where, kind)
    shown = f"'{scheme}:'" if scheme else "no scheme"
    raise MediaError(
        f"{where} has {shown}; use an https:// or http:// URL, a data:{kind}/...;base64 URL, "
        "or stepfile://FILE_ID of an uploaded file",
        code=f"invalid_{kind}_url",
    )


def parse_data_url(url: str, where: str, kind: Kind = "image") -> DataSource:
    """RFC 2397 ``data:[<mime>][;param=value]*;base64,<payload>``; only base64, only ``kind``."""
    comma = url.find(",", 0, _MAX_HEADER)
    if comma < 0:
        raise _bad_data_url(where, "it has no ',' between the header and the data", kind)
    head = url[:comma]
    params = [p.strip() for p in head[len("data:") :].split(";")]
    mime = params[0].lower()
    if "base64" not in (p.lower() for p in params[1:]):
        why = "it is not base64-encoded (add ';base64' and encode the bytes)"
        raise _bad_data_url(where, why, kind)
    _check_mime(mime, where, kind)
    if comma == len(url) - 1:
        raise _bad_data_url(where, "its data is empty", kind)
    return DataSource("image/jpeg" if mime == "image/jpg" else mime, url, comma + 1)


def _check_mime(mime: str, where: str, kind: Kind) -> None:
    shown = f"'{mime}'" if mime else "no MIME type"
    if kind == "image" and mime not in DATA_URL_MIME_TYPES:
        raise UnsupportedContentError(
            f"{where} is a data URL with {shown}; images must be JPEG, PNG, GIF or WebP "
            "(data:image/jpeg;base64,..., image/png, image/gif or image/webp)",
        )
    if kind == "video" and mime not in VIDEO_DATA_URL_MIME_TYPES:
        hint = " (send images as image_url parts)" if mime.startswith("image/") else ""
        raise UnsupportedContentError(
            f"{where} is a data URL with {shown}{hint}; videos must be MP4, MOV, MKV or WebM "
            "(data:video/mp4;base64,..., video/quicktime, video/x-matroska or video/webm)",
        )


def decode_data(source: DataSource, where: str) -> bytes:
    """Strict base64: the standard alphabet, correct padding, no whitespace or line breaks."""
    payload = source.payload
    try:
        if _fast_b64decode is not None:
            return _fast_b64decode(payload, validate=True)
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        kind: Kind = "image" if source.mime.startswith("image/") else "video"
        raise _bad_data_url(where, _base64_problem(payload), kind) from None


def _base64_problem(payload: str) -> str:
    if any(c in payload for c in " \t\r\n"):
        return "its base64 data contains whitespace or line breaks; remove them"
    if any(c in payload for c in "-_") and not any(c in payload for c in "+/"):
        return "its data uses the URL-safe base64 alphabet ('-', '_'); use standard base64"
    if "%" in payload:
        return "its base64 data is percent-encoded; send it unescaped"
    if not _BASE64_CHARS.fullmatch(payload):
        return "its data contains characters outside the base64 alphabet"
    return "its base64 data is malformed (length not a multiple of 4, or wrong padding)"


def _bad_data_url(where: str, why: str, kind: Kind = "image") -> MediaError:
    example = "data:image/png;base64,<data>" if kind == "image" else "data:video/mp4;base64,<data>"
    return MediaError(
        f"{where} is not a valid data URL: {why}. Expected {example}",
        code=f"invalid_{kind}_url",
    )


def _parse_stepfile(url: str, where: str, kind: Kind = "image") -> StepFileSource:
    file_id = url[len("stepfile://") :] if url.lower().startswith("stepfile://") else ""
    if not _STEPFILE_ID.fullmatch(file_id):
        raise MediaError(
            f"{where} is not a valid stepfile URL; expected stepfile://FILE_ID with the id "
            "returned by POST /v1/files",
            code=f"invalid_{kind}_url",
        )
    return StepFileSource(file_id)
