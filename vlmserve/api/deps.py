"""Request-scoped dependencies: the ``Services`` container and the caller's tenant."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from vlmserve.api.services import Services


# Async on purpose: FastAPI runs a sync dependency in a worker thread, a hop per request.
async def services(request: Request) -> Services:
    return cast("Services", request.app.state.services)


async def tenant(request: Request) -> str:
    return cast("Services", request.app.state.services).keys.tenant(request)


ServicesDep = Annotated[Services, Depends(services)]
TenantDep = Annotated[str, Depends(tenant)]
