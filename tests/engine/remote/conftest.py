"""Three fake vLLM replicas on loopback for the whole module; behaviours reset per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine.remote.upstream import Behaviour, FakeUpstream, UpstreamServer


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[UpstreamServer]]:
    servers = [UpstreamServer(FakeUpstream()).start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def fresh_replicas(request: pytest.FixtureRequest) -> None:
    if "replicas" not in request.fixturenames:
        return
    for server in request.getfixturevalue("replicas"):
        server.upstream.behaviour = Behaviour()
        server.upstream.requests.clear()
        server.upstream.probes.clear()
        server.upstream.aborted = 0
        if server._server is None:
            server.start()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
