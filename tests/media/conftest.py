"""A loopback HTTP server with misbehaving endpoints, for the fetcher's tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.media.images import encode, gradient

PNG = encode(gradient(40, 30), "PNG")
Route = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class ImageServer:
    base: str  # http://127.0.0.1:PORT
    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    num_active: int = 0  # "/slow-counted" requests being answered now
    max_active: int = 0  # ... at most, since the server started
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "image/png") -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _redirect(h: BaseHTTPRequestHandler, location: str, status: int = 302) -> None:
    h.send_response(status)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.end_headers()


def _chain(h: BaseHTTPRequestHandler) -> None:
    hops = int(h.path.rsplit("/", 1)[1])
    if hops == 0:
        _send(h, 200, PNG)
    else:
        _redirect(h, f"/chain/{hops - 1}")


def _slow_headers(h: BaseHTTPRequestHandler) -> None:
    time.sleep(1.5)
    _send(h, 200, PNG)


def _drip(h: BaseHTTPRequestHandler) -> None:
    """Sends a byte at a time, each within the read timeout, forever."""
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Length", str(10**6))
    h.end_headers()
    h.wfile.write(PNG[:64])
    for _ in range(100):
        time.sleep(0.1)
        h.wfile.write(b"\x00")
        h.wfile.flush()


def _endless(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.end_headers()  # no length: read until the cap
    h.wfile.write(PNG[:64])
    chunk = b"\x00" * 65536
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for _ in range(10_000):
            h.wfile.write(chunk)


def _huge(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Length", str(10**10))
    h.end_headers()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        h.wfile.write(PNG[:64])


def _counted(h: BaseHTTPRequestHandler, state: ImageServer) -> None:
    """Answers after 0.3 s, counting how many such requests overlap."""
    with state.lock:
        state.num_active += 1
        state.max_active = max(state.max_active, state.num_active)
    time.sleep(0.3)
    with state.lock:
        state.num_active -= 1
    _send(h, 200, PNG)


def _not_found(h: BaseHTTPRequestHandler) -> None:
    _send(h, 404, b"", "text/plain")


ROUTES: dict[str, Route] = {
    "/img.png": lambda h: _send(h, 200, PNG),
    "/img-as-text": lambda h: _send(h, 200, PNG, "text/plain"),
    "/html-as-png": lambda h: _send(h, 200, b"<!DOCTYPE html><html>nope</html>" * 4, "image/png"),
    "/status/404": lambda h: _send(h, 404, b"not found", "text/plain"),
    "/status/503": lambda h: _send(h, 503, b"busy", "text/plain"),
    "/to-metadata": lambda h: _redirect(h, "http://169.254.169.254/latest/meta-data/"),
    "/to-private": lambda h: _redirect(h, "http://10.1.2.3/x.png", 307),
    "/to-numeric": lambda h: _redirect(h, "http://0xa9fea9fe/latest/"),  # 169.254.169.254
    "/to-file": lambda h: _redirect(h, "file:///etc/passwd"),
    "/no-location": lambda h: _send(h, 302, b"", "text/plain"),
    "/slow-headers": _slow_headers,
    "/drip": _drip,
    "/endless": _endless,
    "/huge": _huge,
}


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    state = ImageServer(base="", port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Host", "")))
            if self.path.startswith("/chain/"):
                return _chain(self)
            if self.path == "/slow-counted":
                return _counted(self, state)
            ROUTES.get(self.path, _not_found)(self)
            return None

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    state.base = f"http://127.0.0.1:{state.port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
