"""``GET /v1/usage`` (admin): the ledger's totals, as ``vlmserve usage`` prints them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from vlmserve.api.admin import parse_since
from vlmserve.api.deps import AdminDep, ServicesDep
from vlmserve.protocol.errors import ErrorResponse

router = APIRouter()


@router.get(
    "/v1/usage",
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
    summary="Token usage totals from the ledger (admin key): all, or by day, model or key",
)
async def usage(
    services: ServicesDep,
    _admin: AdminDep,
    key: Annotated[str | None, Query(description="a key's name")] = None,
    since: Annotated[str | None, Query(description="YYYY-MM-DD (UTC) or ISO 8601")] = None,
    by: Literal["day", "model", "key"] | None = None,
) -> dict[str, Any]:
    await services.ledger.flush()  # what finished until now, not a second ago
    rows = await services.ledger.totals(key, parse_since(since), by)
    return {"object": "list", "data": rows}
