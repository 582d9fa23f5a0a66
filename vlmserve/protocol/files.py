"""The Files API (``/v1/files``): Step's File object, which the OpenAI SDKs parse unchanged."""

from __future__ import annotations

from typing import Literal

from vlmserve.protocol.common import WireModel


class FileObject(WireModel):
    id: str  # "file-..."; referenced in chat as "stepfile://" + id
    object: Literal["file"] = "file"
    bytes: int
    created_at: int  # Unix seconds
    filename: str
    purpose: str  # "storage" on this server
    status: Literal["processed"] = "processed"


class FileList(WireModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    # OpenAI's cursor fields: the SDKs page with ``after`` until ``has_more`` is false.
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(WireModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
