"""The Dask cluster a build starts itself spends less CPU on its own housekeeping: an idle
one-worker cluster, all processes summed, measured beside one with Dask's defaults in the same run;
its workers sample no profile and start with the build's modules imported."""

from __future__ import annotations

import logging
import multiprocessing
import time

import mercantile
import psutil
import pytest
from shapely.geometry import box

from scale_alibi.curate.pipeline.local_cluster import LOCAL_CLUSTER_CONFIG, start_local_cluster

IDLE_S = 8.0


def idle_cluster_cpu_per_s(config: dict) -> float:
    """CPU-seconds per second of an idle LocalCluster (1 worker process), this process and its children."""
    import dask
    from dask.distributed import Client, LocalCluster

    def tree_cpu() -> float:
        me = psutil.Process()
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    with dask.config.set(config):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            assert client.submit(lambda: dask.config.get("distributed.admin.tick.interval")).result() == \
                config.get("distributed.admin.tick.interval", "20ms")  # the worker process got the settings
            time.sleep(1.0)  # past start-up
            c0, t0 = tree_cpu(), time.monotonic()
            time.sleep(IDLE_S)
            return (tree_cpu() - c0) / (time.monotonic() - t0)
    finally:
        cluster.close()


def test_an_idle_local_cluster_costs_at_most_three_quarters_of_dasks_defaults():
    default = idle_cluster_cpu_per_s({})
    tuned = idle_cluster_cpu_per_s(LOCAL_CLUSTER_CONFIG)
    print(f"idle one-worker cluster: {default * 1e3:.1f} ms CPU per s with Dask's defaults, {tuned * 1e3:.1f} with the build's")
    assert tuned <= 0.75 * default, f"{tuned * 1e3:.1f} vs {default * 1e3:.1f} ms CPU per s idle"



def _busy(seconds: float) -> int:
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


def test_the_build_cluster_workers_sample_no_profile_while_a_task_runs():
    """Dask's statistical profiler walks a running task's stack every 10 ms (CPU taken from the task);
    the cluster a build starts runs without it: Dask's profile of a busy task has no samples."""
    import dask
    from dask.distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.profile.enabled": True}):  # the oracle: Dask samples by default
        default = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    counts = {}
    for name, cluster in (("defaults", default), ("build", None)):
        cluster = cluster or start_local_cluster("local", 1)
        try:
            with Client(cluster) as client:
                client.submit(_busy, 1.0, pure=False).result()
                counts[name] = client.profile()["count"]
        finally:
            cluster.close()
    assert counts["defaults"] > 0, counts
    assert counts["build"] == 0, counts


def _imported(module: str) -> bool:
    import sys

    return module in sys.modules


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_the_build_cluster_workers_start_with_the_build_imported():
    """The workers fork from a server that imported the build's modules once: a worker that has run
    nothing yet already holds them (a spawned interpreter would import them with its first task)."""
    from dask.distributed import Client

    cluster = start_local_cluster("local", 2)
    try:
        with Client(cluster) as client:
            held = client.run(_imported, "scale_alibi.curate.warp")
            assert len(held) == 2 and all(held.values()), held
            assert not _imported_in_a_spawned_worker()
    finally:
        cluster.close()


def _imported_in_a_spawned_worker() -> bool:
    """The oracle: the same check in a worker of Dask's default (spawned) cluster."""
    import dask
    from dask.distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            return all(client.run(_imported, "scale_alibi.curate.warp").values())
    finally:
        cluster.close()


def test_a_cluster_build_cuts_its_larger_metatiles_first(world, tmp_path, monkeypatch):
    """Metatiles are submitted with their tile count as priority: on one worker thread they are cut
    largest first (the short ones come last, so several workers finish together), whatever their
    row order."""
    from scale_alibi.curate.pipeline import RunOptions, build_release, executor, resolve_request
    from scale_alibi.curate.pipeline.tiling import group_metatiles

    request = resolve_request(zoom=16, region=box(*world.bbox), release="order", catalog=world.stac_url)
    sizes = {mt: len(tiles) for mt, tiles in group_metatiles(request.plan(), request.params.metatile_levels).items()}
    in_row_order = list(sizes.values())
    assert in_row_order != sorted(in_row_order, reverse=True)  # the oracle: row order alone is not largest first
    cut: list = []
    summarize = executor.summarize

    def record(result: dict):
        z, x, y = result["metatile"]
        cut.append(sizes[mercantile.Tile(x, y, z)])
        return summarize(result)

    monkeypatch.setattr(executor, "summarize", record)
    build_release(tmp_path, request, RunOptions(scheduler="threads", workers=1, signer="none", progress=False,
                                                echo=lambda m: None))
    assert len(cut) == len(sizes) and cut == sorted(cut, reverse=True), cut


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name)


def _parent_pid() -> int:
    import os

    return os.getppid()


def _workers_parents_and_env(names: tuple[str, ...]) -> tuple[set[int], list[set[str | None]]]:
    """A new build cluster of 2 workers: the parent pids of its workers (the forkserver's) and, for each
    of `names`, the values its workers see."""
    from dask.distributed import Client

    cluster = start_local_cluster("local", 2)
    try:
        with Client(cluster) as client:
            return (set(client.run(_parent_pid).values()),
                    [set(client.run(_env, name).values()) for name in names])
    finally:
        cluster.close()


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_the_workers_of_each_build_cluster_see_the_environment_as_it_is_when_it_starts(monkeypatch):
    """Workers fork from a server process, which keeps the environment it started with: a cluster
    whose environment differs from the server's starts a new one, so what was set or removed since
    an earlier cluster of this process (an S3 endpoint, credentials) is what its workers see.
    Oracle: this process's os.environ."""
    names = ("SCALE_ALIBI_PROBE_NEW", "SCALE_ALIBI_PROBE_GONE")
    monkeypatch.setenv("SCALE_ALIBI_PROBE_GONE", "set at first")
    monkeypatch.delenv("SCALE_ALIBI_PROBE_NEW", raising=False)
    first_parents, first = _workers_parents_and_env(names)
    monkeypatch.setenv("SCALE_ALIBI_PROBE_NEW", "set later")
    monkeypatch.delenv("SCALE_ALIBI_PROBE_GONE", raising=False)
    second_parents, second = _workers_parents_and_env(names)
    assert first == [{None}, {"set at first"}]
    assert second == [{"set later"}, {None}]
    assert len(first_parents) == len(second_parents) == 1 and first_parents != second_parents


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_a_later_build_cluster_forks_from_the_same_server_until_the_package_changes_on_disk():
    """A second cluster with the same environment forks its workers from the server of the first (its
    imports are not paid again: both workers' parent is one process, and it is the same one); once a
    module of the package is modified on disk, the next cluster's workers fork from a new server,
    which imports the edited code."""
    import os

    import scale_alibi.curate.encode as module

    first, _ = _workers_parents_and_env(())
    again, _ = _workers_parents_and_env(())
    stat = os.stat(module.__file__)
    os.utime(module.__file__, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # an edit
    try:
        edited, _ = _workers_parents_and_env(())
    finally:
        os.utime(module.__file__, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(first) == 1 and again == first
    assert len(edited) == 1 and edited != first


ALLOCATIONS, ARRAY_MIB = 50, 8
PAGES_PER_ARRAY = ARRAY_MIB * 2**20 // 4096


def _faults_of_allocations() -> int:
    """Minor page faults of this process while it allocates, fills and frees ALLOCATIONS arrays in turn.
    numpy's transparent-huge-page hint is off meanwhile: where the kernel can back a fresh mapping with
    2 MiB pages (depending on how fragmented memory is at the time) it takes 512x fewer faults, and
    the count would say more about the machine's memory than about malloc's reuse."""
    import resource

    import numpy as np

    try:  # numpy >= 2
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy 1.26, which pyproject.toml still allows
        from numpy.core.multiarray import _set_madvise_hugepage

    hinted = _set_madvise_hugepage(False)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(ALLOCATIONS):
            a = np.ones(ARRAY_MIB << 20, dtype=np.uint8)
            del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    finally:
        _set_madvise_hugepage(hinted)


def test_a_build_worker_reuses_freed_memory(monkeypatch):
    """A build worker allocating arrays in turn reuses the memory it freed, as a plain process does:
    its page faults stay far below one fault per page of every array (the hand count,
    ALLOCATIONS x PAGES_PER_ARRAY), where a worker of Dask's default cluster (MALLOC_TRIM_THRESHOLD_
    set, glibc's mmap threshold pinned) maps each array anew."""
    import dask
    from dask.distributed import Client, LocalCluster

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # an earlier Dask cluster sets it in os.environ
    fresh_every_time = ALLOCATIONS * PAGES_PER_ARRAY
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        default = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    faults = {}
    for name, cluster in (("defaults", default), ("build", None)):
        monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
        cluster = cluster or start_local_cluster("local", 1)
        try:
            with Client(cluster) as client:
                faults[name] = client.submit(_faults_of_allocations, pure=False).result()
        finally:
            cluster.close()
    print(f"page faults for {ALLOCATIONS} arrays of {ARRAY_MIB} MiB: {faults} (one per page: {fresh_every_time})")
    assert faults["defaults"] > fresh_every_time / 2, faults  # the oracle's cluster maps every array anew
    # glibc maps the first array, raises its mmap threshold when it is freed and takes the second from
    # the heap, which it keeps: about two arrays' pages in all, against fifty
    assert faults["build"] < fresh_every_time / 10, faults
