"""Schemathesis over ``/openapi.json`` against a real ``vlmserve serve`` (tiny dummy model):
no 5xx and every response matching the schema, from every operation.

Two runs, each with a bounded number of examples per operation: a fixed seed (the same cases in
every CI run) and a rotating one (new cases each run), printed so a failure reproduces with
``VLMSERVE_FUZZ_SEED=<seed>``. The served models get a 512-token window so that a generated
``max_tokens`` costs well under a second on the tiny model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ServeProcess

FIXED_SEED = 12
MAX_EXAMPLES = 10  # per operation and phase
# The coverage phase (boundary values of every field) does not depend on the seed: run it once.
PHASES = {"fixed": "examples,coverage,fuzzing,stateful", "rotating": "fuzzing,stateful"}
CHECKS = "not_a_server_error,response_schema_conformance"
CATALOG = Path(__file__).parents[2] / "vlmserve" / "catalog" / "default.toml"


def rotating_seed() -> int:
    return int(os.environ.get("VLMSERVE_FUZZ_SEED") or time.time() // 60 % 1_000_000)


@pytest.fixture(scope="module")
def fuzz_server(
    dummy_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    catalog = root / "catalog.toml"
    text = CATALOG.read_text()
    catalog.write_text(
        "\n".join(
            "context_window = 512" if line.startswith("context_window") else line
            for line in text.splitlines()
        )
    )
    env = {"VLMSERVE_CATALOG__FILE": str(catalog), "VLMSERVE_STORAGE__DATA_DIR": str(root / "data")}
    proc = ServeProcess(dummy_models["qwen2_vl"], extra_env=env)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("which", ["fixed", "rotating"])
def test_openapi_fuzzing_finds_no_server_error_and_no_schema_mismatch(
    fuzz_server: ServeProcess, which: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seed = FIXED_SEED if which == "fixed" else rotating_seed()
    with capsys.disabled():
        print(f"\n[schemathesis] {which} seed {seed} (rerun: VLMSERVE_FUZZ_SEED={seed})")
    cmd = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "run",
        f"{fuzz_server.base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(seed),
        "--phases",
        PHASES[which],
        "--request-timeout",
        "60",
        "--workers",
        "1",
        "--suppress-health-check",
        "all",
    ]
    root = Path(__file__).parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
        "NO_COLOR": "1",
    }
    # In a temporary directory: schemathesis keeps a crash cache in its working directory.
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"schemathesis ({which} seed {seed}) found problems:\n{output[-6000:]}\n"
        f"server log:\n{fuzz_server.output()}"
    )
