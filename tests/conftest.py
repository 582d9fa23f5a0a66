"""Shared fixtures: servers on loopback ports (in-process with a fake engine, or real processes)."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.fakes import FakeEngine, fake_factory
from vlmserve.api.app import create_app
from vlmserve.api.services import build_services
from vlmserve.settings import Settings, StorageSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT
    engine: FakeEngine

    @property
    def api(self) -> str:
        return self.base_url + "/v1"


class ThreadedServer:
    """uvicorn in a thread (as httpx's own test-suite does): real sockets, one process."""

    def __init__(self, app: object, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_fake_server(settings: Settings, engine: FakeEngine) -> tuple[ThreadedServer, LiveServer]:
    if settings.storage.data_dir == StorageSettings().data_dir:
        # Never the user's own data dir: its API keys would turn authentication on, and the
        # usage ledger would write there.
        storage = settings.storage.model_copy(update={"data_dir": Path(tempfile.mkdtemp())})
        settings = settings.model_copy(update={"storage": storage})
    services = build_services(settings, fake_factory(engine))
    port = free_port()
    server = ThreadedServer(create_app(settings, services), port)
    return server, LiveServer(f"http://127.0.0.1:{port}", engine)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[LiveServer]:
    """A real HTTP server on loopback over a FakeEngine (fast: no model)."""
    engine = FakeEngine()
    settings = Settings(media={"allow_loopback": True}, server={"max_body_bytes": 4 * 1024 * 1024})
    server, live = start_fake_server(settings, engine)
    with server:
        yield live


@pytest.fixture
def http(fake_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_server.base_url, timeout=30) as client:
        yield client
