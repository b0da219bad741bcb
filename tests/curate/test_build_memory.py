"""A process that cut a metatile keeps the memory it frees for the next one
(scale_alibi.contract.host_memory, applied by cut_metatile): arrays larger than glibc's largest
mmap threshold (32 MiB), as a metatile's read windows and float temporaries are, come back from the
heap instead of being mapped and zeroed page by page anew. Oracle: the hand count of pages, and the
same build with SCALE_ALIBI_RETAIN_FREED_MEMORY=0 (glibc's defaults), each in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ALLOCATIONS, ARRAY_MIB = 20, 48  # above glibc's largest dynamic mmap threshold, 32 MiB
PAGES_PER_ARRAY = ARRAY_MIB * 2**20 // 4096

# A one-process build of `region` into argv[1], then the minor faults of ALLOCATIONS arrays allocated,
# filled and freed in turn (numpy's transparent-huge-page hint off: with 2 MiB pages the count would
# say more about how fragmented the machine's memory is than about reuse); prints triplets, faults.
BUILD_THEN_ALLOCATE = f"""
import resource, sys
import numpy as np
from shapely.geometry import box
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # numpy 1.26
    from numpy.core.multiarray import _set_madvise_hugepage
result = build_release(sys.argv[1], resolve_request(zoom=16, region=box(*map(float, sys.argv[3].split(","))),
                                                    release="m", catalog=sys.argv[2]),
                       RunOptions(signer="none", scheduler="synchronous", progress=False, echo=lambda m: None))
_set_madvise_hugepage(False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ALLOCATIONS}):
    a = np.ones({ARRAY_MIB} << 20, dtype=np.uint8)
    del a
print(result.triplets, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and getrusage's fault counts")
def test_a_build_process_reuses_the_large_arrays_it_frees(world, tmp_path):
    w, s, e, n = world.bbox
    region = ",".join(repr(v) for v in (w, s, (w + e) / 2, (s + n) / 2))  # a quarter of the world
    fresh_every_time = ALLOCATIONS * PAGES_PER_ARRAY
    faults = {}
    for name, retain in (("glibc defaults", "0"), ("build", None)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if retain is not None:
            env["SCALE_ALIBI_RETAIN_FREED_MEMORY"] = retain
        else:
            env.pop("SCALE_ALIBI_RETAIN_FREED_MEMORY", None)
        out = subprocess.run([sys.executable, "-c", BUILD_THEN_ALLOCATE, str(tmp_path / name), world.stac_url,
                              region], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        triplets, faults[name] = map(int, out.stdout.split()[-2:])
        assert triplets > 0  # the build cut metatiles
    print(f"page faults for {ALLOCATIONS} arrays of {ARRAY_MIB} MiB: {faults} (one per page: {fresh_every_time})")
    assert faults["glibc defaults"] > fresh_every_time / 2, faults  # every array mapped anew
    assert faults["build"] < fresh_every_time / 10, faults  # the first one's pages, then the heap's
