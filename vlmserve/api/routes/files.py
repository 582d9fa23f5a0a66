"""The Files API: ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{file_id}``, ``.../content``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, BinaryIO, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.responses import StreamingResponse

from vlmserve.api.deps import ServicesDep, TenantDep
from vlmserve.protocol.errors import ErrorResponse
from vlmserve.protocol.files import FileDeleted, FileList, FileObject

router = APIRouter()
_CHUNK = 1024 * 1024
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
}


@router.post(
    "/v1/files",
    response_model=FileObject,
    responses=_ERRORS,
    summary="Upload an image or video (multipart: purpose=storage, and file or url)",
)
async def create_file(
    services: ServicesDep,
    tenant: TenantDep,
    purpose: Annotated[str | None, Form()] = None,
    file: Annotated[UploadFile | None, File()] = None,
    url: Annotated[str | None, Form()] = None,
) -> FileObject:
    filename = file.filename if file is not None else None
    return await services.files.upload(tenant, purpose, file=file, filename=filename, url=url)


@router.get("/v1/files", response_model=FileList, summary="List your files, newest first")
async def list_files(
    services: ServicesDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> FileList:
    return await services.files.list(tenant, after=after, limit=limit, order=order, purpose=purpose)


@router.get(
    "/v1/files/{file_id}", response_model=FileObject, responses=_ERRORS, summary="Retrieve a file"
)
async def retrieve_file(file_id: str, services: ServicesDep, tenant: TenantDep) -> FileObject:
    return await services.files.retrieve(tenant, file_id)


@router.get(
    "/v1/files/{file_id}/content",
    response_class=StreamingResponse,
    responses=_ERRORS,
    summary="Download a file's bytes",
)
async def file_content(file_id: str, services: ServicesDep, tenant: TenantDep) -> StreamingResponse:
    content = await services.files.content(tenant, file_id)
    return StreamingResponse(
        _chunks(content.file),
        media_type=content.content_type,
        headers={
            "Content-Length": str(content.num_bytes),
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(content.filename)}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.delete(
    "/v1/files/{file_id}", response_model=FileDeleted, responses=_ERRORS, summary="Delete a file"
)
async def delete_file(file_id: str, services: ServicesDep, tenant: TenantDep) -> FileDeleted:
    return await services.files.delete(tenant, file_id)


async def _chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(file.read, _CHUNK):
            yield chunk
    finally:
        file.close()
