"""Keep freed activation memory in the process instead of returning it to the OS (glibc).

A training step allocates and frees the same few-megabyte activations every step. glibc
serves such blocks with ``mmap`` or trims them from the heap when freed, so the next step
writes to fresh pages and pays a page fault per 4 KiB; PyTorch's CPU tuning guide
recommends jemalloc or tcmalloc for this. Without a new dependency, raising glibc's mmap
and trim thresholds has the same effect for tensors up to 32 MiB: measured 5–10 % of a
``cifar10_rectangle`` training step on 2 cores (``benchmarks/bench_vs_authors.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems (4 MiB · sizeof(long)).
_MMAP_MAX = 32 * 1024 * 1024
_TRIM = 1024 * 1024 * 1024

ENV = "PERTURBSETS_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Serve blocks up to 32 MiB from the heap and trim it only above 1 GiB free; True if applied.

    Process-wide, so the command line calls it and a library import does not. Nothing
    happens off Linux, with another C library, or with ``PERTURBSETS_KEEP_FREED_MEMORY=0``.
    """
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM))
