"""``POST /v1/images/inspect``: the model-ready size and token cost of one image."""

from __future__ import annotations

from fastapi import APIRouter

from vlmserve.api.deps import ServicesDep, TenantDep
from vlmserve.protocol.errors import ErrorResponse
from vlmserve.protocol.images import ImageInspection, ImageInspectRequest

router = APIRouter()


@router.post(
    "/v1/images/inspect",
    response_model=ImageInspection,
    responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}},
    summary="What the model sees of one image (size after resizing) and its token cost",
)
async def inspect_image(
    body: ImageInspectRequest, services: ServicesDep, tenant: TenantDep
) -> ImageInspection:
    return await services.inspector.inspect(body, tenant)
