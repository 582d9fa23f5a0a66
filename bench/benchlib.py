"""Shared by the benchmark scripts: docs sections, peak memory, child processes, timings."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_section(path: Path, section: str, body: str) -> None:
    """Replace the section headed ``section`` (up to the next ``## ``) by ``body``, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(section)
    if start >= 0:
        end = text.find("\n## ", start + len(section))
        text = text[:start] + body + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """The median wall time of ``call`` over ``repeats`` runs after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        call()
    costs = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        costs.append(time.perf_counter() - started)
    return statistics.median(costs)


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def spawn(script: str, *args: object) -> Any:
    """Run ``script --child ARGS`` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, script, "--child", json.dumps(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@contextmanager
def stock_linears(model: Any, runner: Any = None) -> Iterator[None]:
    """The engine's model with plain ``nn.Linear`` layers (as stock transformers loads it) for a
    ``generate`` baseline on the same model object; packed again afterwards. ``runner``: the
    engine's ``ModelRunner``, whose direct decode step holds the packed layers it was built on:
    it is dropped first (else the old packed weights stay alive beside the new ones: a 3B model
    twice over ran a 24 GiB machine out of memory) and rebuilt on the new ones."""
    from vlmserve.engine.local.decode_step import DecodeStep
    from vlmserve.engine.local.packed_linear import (
        PackedLinear,
        pack_language_model,
        unpack_language_model,
    )

    direct = runner is not None and runner._direct is not None
    if direct:
        runner._direct = None
    # A tied output head is packed only where the loader judged its copy small: as it was.
    head_packed = isinstance(model.get_output_embeddings(), PackedLinear)
    packed = unpack_language_model(model)
    try:
        yield
    finally:
        if packed:
            pack_language_model(model, tied_head_max_bytes=sys.maxsize if head_packed else 0)
        if direct:
            runner._direct = DecodeStep.of(model)
