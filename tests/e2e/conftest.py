"""Real ``vlmserve serve`` processes on loopback ports, over tiny dummy models of two families."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

FAMILIES = ("idefics3", "qwen2_vl")


@pytest.fixture(scope="session")
def dummy_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlmserve.dummy import make_dummy_model

    root = tmp_path_factory.mktemp("models")
    return {family: make_dummy_model(root / family, family, "tiny") for family in FAMILIES}


class ServerProcess:
    def __init__(self, model: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLMSERVE_MEDIA__ALLOW_LOOPBACK": "true"}
        # a data dir of its own: never the user's API keys, files or usage ledger
        env.setdefault("VLMSERVE_STORAGE__DATA_DIR", tempfile.mkdtemp(prefix="vlmserve-e2e-"))
        env.update(extra_env or {})
        cmd = [sys.executable, "-m", "vlmserve", "serve", "--model", str(model)]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        # A file, not a pipe: a full pipe would block the server's logging.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env=env, stderr=self.log, stdout=self.log)

    @property
    def api(self) -> str:
        return self.base_url + "/v1"

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not become ready: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-5000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module", params=FAMILIES)
def server(
    request: pytest.FixtureRequest, dummy_models: dict[str, Path]
) -> Iterator[ServerProcess]:
    proc = ServerProcess(dummy_models[request.param])
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


class ServeProcess(ServerProcess):
    """``vlmserve serve`` with extra arguments (``--upstream``) and, to restart one in place
    after killing it, a port of the caller's choice."""

    def __init__(
        self,
        model: Path,
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLMSERVE_MEDIA__ALLOW_LOOPBACK": "true"}
        # a data dir of its own: never the user's API keys, files or usage ledger
        env.setdefault("VLMSERVE_STORAGE__DATA_DIR", tempfile.mkdtemp(prefix="vlmserve-e2e-"))
        env.update(extra_env or {})
        cmd = [sys.executable, "-m", "vlmserve", "serve", "--model", str(model), *args]
        cmd += ["--port", str(self.port), "--log-level", log_level]
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env=env, stderr=self.log, stdout=self.log)

    def kill(self) -> None:
        """SIGKILL: the process dies mid-request, as a crashed replica would."""
        self.proc.kill()
        self.proc.wait()
