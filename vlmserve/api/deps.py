"""Request-scoped dependencies: the ``Services`` container and the caller's identity."""

from __future__ import annotations

import time
from typing import Annotated, cast

from fastapi import Depends, Request

from vlmserve.api.auth import Identity, require_admin
from vlmserve.api.services import Services


# Async on purpose: FastAPI runs a sync dependency in a worker thread, a hop per request.
async def services(request: Request) -> Services:
    return cast("Services", request.app.state.services)


async def identity(request: Request) -> Identity:
    """Authenticate; the key's name and rate-limit state go to the access log and headers."""
    built = cast("Services", request.app.state.services)
    who = await built.keys.identify(request)
    state = request.scope.setdefault("state", {})
    state["key_name"] = who.name
    state["ratelimit"] = built.limiter.state(who.id, who.tier)
    built.ledger.touch(who.id, int(time.time()))
    return who


async def tenant(request: Request) -> str:
    """The owner of files and the prompt-cache tenant: the key's id, never the key."""
    return (await identity(request)).id


async def admin(request: Request) -> Identity:
    who = await identity(request)
    require_admin(who, request.url.path)
    return who


ServicesDep = Annotated[Services, Depends(services)]
IdentityDep = Annotated[Identity, Depends(identity)]
TenantDep = Annotated[str, Depends(tenant)]
AdminDep = Annotated[Identity, Depends(admin)]
