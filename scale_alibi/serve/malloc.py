"""Keep a server process's freed memory for reuse instead of handing it back to the kernel.

A shard stream allocates a ~1 MB tar batch and uvicorn a ~1 MB chunk for each triplet, a tile read
a ~130 kB body. glibc serves blocks that large with fresh mmaps (or trims its heaps after each
free), so every batch paid page faults and zero-filled pages: 11% of a shard stream's CPU and an
extra write pass over the bytes (profiled with `perf record` on the serve benchmark's shard). With
these thresholds such blocks come from malloc's heaps and are reused; a worker's resident memory
stays at its peak instead of shrinking after it (at most a few batches per concurrent stream).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD_BYTES = 64 * 2**20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library has no
    mallopt or refuses (musl, macOS: nothing changes, the server is only slower there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not ok:
        log.info("mallopt refused the thresholds; freed memory goes back to the kernel")
    return ok
