"""``GET /metrics``: Prometheus exposition (an admin key is needed when
``server.metrics_admin_only``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from vlmserve.api.deps import ServicesDep, admin
from vlmserve.api.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, services: ServicesDep) -> Response:
    if services.settings.server.metrics_admin_only:
        await admin(request)
    return Response(await services.metrics.render(), media_type=CONTENT_TYPE)
