"""``create_app``: the FastAPI application over a ``Services`` container."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vlmserve.api.errors import install_error_handlers
from vlmserve.api.middleware import TraceMiddleware
from vlmserve.api.routes import chat, files, health, metrics, models, tokens, usage
from vlmserve.api.services import Services, build_services
from vlmserve.settings import Settings


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The ASGI app; ``services`` lets tests inject fakes, else they are built from settings."""
    settings = settings or (services.settings if services else Settings())
    built = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await built.start()
        try:
            yield
        finally:
            await built.close()

    app = FastAPI(
        title="vlmserve",
        summary="The Step vision-model API on open vision-language models",
        lifespan=lifespan,
    )
    app.state.services = built
    install_error_handlers(app)
    upload_cap = max(settings.server.max_body_bytes, settings.storage.max_upload_bytes + 2**20)
    app.add_middleware(
        TraceMiddleware,
        max_body_bytes=settings.server.max_body_bytes,
        path_limits={"/v1/files": upload_cap},  # the upload's own 413 names the exact limit
    )
    routers = (chat.router, files.router, models.router, tokens.router, health.router)
    for router in (*routers, usage.router, metrics.router):
        app.include_router(router)
    return app
