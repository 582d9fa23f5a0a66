"""The thread that prepares prompts (chat template, tokenizer, the processor's pixel work) beside
the step thread, so an arriving picture never stalls the running streams.

The processor's image transforms are torch ops. A second thread running them with torch's
default thread count would start a second OpenMP team: libgomp then manages more threads than
cores, stops spin-waiting and every decode step gets ~1.6x slower on a CPU. So the pool's one
thread sets its own OpenMP thread count to 1 (an OpenMP setting is per thread; torch applies its
global count once per thread, before we override it): its torch ops run inline, no team.
"""

from __future__ import annotations

import ctypes
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

log = logging.getLogger(__name__)


def prep_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="vlmserve-prepare", initializer=_one_thread)


def _one_thread() -> None:
    torch.get_num_threads()  # torch's once-per-thread OpenMP setup runs now, not later
    library = _openmp_library()
    if library is not None:
        ctypes.CDLL(library).omp_set_num_threads(1)
    if torch.get_num_threads() != 1:
        log.warning("prompt preparation could not be limited to one thread; decoding may slow")


def _openmp_library() -> str | None:
    """The OpenMP runtime torch loaded (a path from this process's memory map)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if any(name in path for name in ("libgomp", "libiomp", "libomp")):
                    return path
    except OSError:
        return None
    return None
