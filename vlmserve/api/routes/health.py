"""``GET /healthz`` (the process is up) and ``GET /readyz`` (every bound model is loaded)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from vlmserve.api.deps import ServicesDep

router = APIRouter()


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 once every bound model is loaded, else 503")
async def readyz(services: ServicesDep) -> JSONResponse:
    engines = {}
    for binding, engine in services.engines.items():
        health = await engine.health()
        engines[binding.model] = {
            "ready": health.ready,
            "detail": health.detail,
            "running": health.num_running,
            "waiting": health.num_waiting,
            "preempted": health.num_preempted,
            "kv_cache_bytes": health.kv_cache_bytes,
            "kv_cache_max_bytes": health.kv_cache_max_bytes,
        }
    ready = all(e["ready"] for e in engines.values())
    body = {"status": "ready" if ready else "not_ready", "engines": engines}
    return JSONResponse(body, status_code=200 if ready else 503)
