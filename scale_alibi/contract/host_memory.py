"""Host allocator tuning for processes that free and re-allocate the same large buffers.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
hands it back with munmap on free (and trims its heaps), so a buffer freed and allocated again
is page-faulted in again each time. This is what LD_PRELOAD=jemalloc/tcmalloc does, without a
preload. Three users:

- CPU training re-allocates the same activation and gradient buffers every step.
  `benchmarks/host_memory_bench.py` (`tiny`, batch 32, 2 cores): 818 ms/step with 468 ms of it in
  the kernel by default, 599 ms/step and 9 ms kernel with freed memory kept in the heap (1.36x).
- A server streaming shards allocates a ~1 MB tar batch and a ~1 MB HTTP chunk per triplet:
  72.6 minor faults per MB streamed by default, 7% of the stream's CPU in `perf record`
  (tests/serve/test_serve_memory.py counts them).
- A build process (the driver with `--scheduler synchronous`, each Dask worker) allocates and frees
  arrays of tens of megabytes per metatile (read windows, warped rasters, float temporaries), above
  glibc's largest mmap threshold: each was mapped anew and its pages zeroed by the kernel (with
  numpy's huge-page hint, 2 MiB at a time). `python benchmarks/host_memory_bench.py --workload build`
  measures a one-process build both ways.

`SCALE_ALIBI_RETAIN_FREED_MEMORY=0` in the environment leaves glibc's allocator as it is (a process
that must hand memory back to the OS between peaks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_TRIM_THRESHOLD_BYTES = 1 << 30  # keep up to 1 GiB of freed memory at the heap top
RETAIN_ENV = "SCALE_ALIBI_RETAIN_FREED_MEMORY"  # "0": leave the allocator at glibc's defaults


@functools.cache  # once per process: callers on hot paths (every metatile) pay a dictionary look-up
def retain_freed_memory() -> bool:
    """Keep freed buffers in this process's heap for reuse (glibc only); True if applied.

    The process's resident size then stays at its peak instead of shrinking between steps, the
    trade every caching allocator makes. Applies to processes forked afterwards too (DataLoader
    workers). Not applied where RETAIN_ENV is "0".
    """
    if os.environ.get(RETAIN_ENV) == "0":
        log.debug("%s=0: the allocator is left at glibc's defaults", RETAIN_ENV)
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt refused the heap settings; the allocator is unchanged")
    return ok
