"""Request-scoped dependencies: the ``Services`` container and the caller's tenant."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from vlmserve.api.services import Services


def services(request: Request) -> Services:
    return cast("Services", request.app.state.services)


def tenant(request: Request) -> str:
    return services(request).keys.tenant(request)


ServicesDep = Annotated[Services, Depends(services)]
TenantDep = Annotated[str, Depends(tenant)]
