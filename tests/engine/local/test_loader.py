"""``locate``: where a model loads from, decided by one quick hub request, never minutes of
retries: a directory, the hub id (reachable: downloads with progress bars), the cache's copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlmserve.engine.local import loader
from vlmserve.errors import ModelUnavailableError


class _Hub(BaseHTTPRequestHandler):
    known = frozenset({"/api/models/org/there"})

    def do_GET(self) -> None:
        self.send_response(200 if self.path in self.known else 404)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(loader.hub_constants, "ENDPOINT", url)
    yield url
    server.shutdown()
    server.server_close()


def test_a_reachable_hub_keeps_the_hub_id_so_downloads_show_progress(hub: str) -> None:
    assert loader.locate("org/there") == "org/there"


def test_an_unknown_or_gated_model_is_named_with_the_hubs_answer(hub: str) -> None:
    with pytest.raises(ModelUnavailableError, match="answered 404") as info:
        loader.locate("org/missing")
    assert "'org/missing'" in info.value.message and "make-dummy-model" in info.value.message


def test_an_unreachable_hub_fails_in_one_short_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # 192.0.2.0/24 (TEST-NET-1) never answers: only the timeout ends the attempt.
    monkeypatch.setattr(loader.hub_constants, "ENDPOINT", "http://192.0.2.1")
    monkeypatch.setattr(loader, "_cached_copy", lambda model: None)
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        loader.locate("org/any", timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_an_unreachable_hub_falls_back_to_the_cached_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader.hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(loader, "_cached_copy", lambda model: "/cache/snapshots/abc")
    assert loader.locate("org/cached") == "/cache/snapshots/abc"
