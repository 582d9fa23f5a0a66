"""``POST /v1/token/count``."""

from __future__ import annotations

from fastapi import APIRouter

from vlmserve.api.deps import ServicesDep, TenantDep
from vlmserve.protocol.tokens import TokenCountData, TokenCountRequest, TokenCountResponse

router = APIRouter()


@router.post(
    "/v1/token/count",
    response_model=TokenCountResponse,
    summary="Count the prompt tokens a chat request with these messages is billed",
)
async def count_tokens(
    body: TokenCountRequest, services: ServicesDep, tenant: TenantDep
) -> TokenCountResponse:
    usage = await services.tokens.count(body, tenant)
    return TokenCountResponse(
        data=TokenCountData(
            total_tokens=usage.prompt_tokens,
            image_tokens=usage.image_tokens,
            video_tokens=usage.video_tokens,
        )
    )
