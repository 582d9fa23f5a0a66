"""``GET /``: the browser playground, static files shipped inside the package (no CDN, no build).

Only the files listed here are served (no path from the URL reaches the file system), with a
Content-Security-Policy that lets the page talk to this server alone: it works offline, and
model output rendered as Markdown can never load or run anything.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from vlmserve.errors import NotFoundError

router = APIRouter()

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_DIRECTORY = files("vlmserve.api").joinpath("playground")
# The served set is fixed at import: a URL names one of these files or gets a 404.
_FILES = {p.name for p in _DIRECTORY.iterdir() if "." + p.name.rpartition(".")[2] in _TYPES}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob:; media-src 'self' data: blob:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


@cache
def _read(name: str) -> bytes:
    return _DIRECTORY.joinpath(name).read_bytes()


def _asset(name: str) -> Response:
    if name not in _FILES:
        raise NotFoundError(f"No playground file {name!r}.")
    media_type = _TYPES["." + name.rpartition(".")[2]]
    return Response(_read(name), media_type=media_type, headers=_HEADERS)


@router.get("/", include_in_schema=False)
async def playground() -> Response:
    return _asset("index.html")


@router.get("/playground/{name}", include_in_schema=False)
async def playground_asset(name: str) -> Response:
    return _asset(name)
