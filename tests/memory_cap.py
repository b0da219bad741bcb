"""A cap on the test process's address space, so that an unbounded allocation in the code under
test shows as MemoryError instead of swapping (or OOM-killing) the machine."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

HEADROOM_BYTES = 1 << 30  # what the code under test may add to the address space


@contextmanager
def address_space_capped(headroom: int = HEADROOM_BYTES) -> Iterator[None]:
    """RLIMIT_AS at the current size plus `headroom`, restored afterwards (a soft limit can be raised back)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
