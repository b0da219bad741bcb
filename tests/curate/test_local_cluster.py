"""The Dask cluster a build starts itself spends less CPU on its own housekeeping: an idle
one-worker cluster, all processes summed, measured beside one with Dask's defaults in the same run."""

from __future__ import annotations

import logging
import time

import psutil

from scale_alibi.curate.pipeline.executor import LOCAL_CLUSTER_CONFIG

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


def test_the_build_cluster_workers_sample_no_profile_while_a_task_runs():
    """Dask's statistical profiler walks a running task's stack every 10 ms (CPU taken from the task);
    the build's own cluster runs without it: Dask's profile of a busy task has no samples."""
    import dask
    from dask.distributed import Client, LocalCluster

    def busy(seconds: float) -> int:
        end, n = time.thread_time() + seconds, 0
        while time.thread_time() < end:
            n += 1
        return n

    counts = {}
    for name, config in (("defaults", {}), ("build", LOCAL_CLUSTER_CONFIG)):
        with dask.config.set(config):
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                client.submit(busy, 1.0, pure=False).result()
                counts[name] = client.profile()["count"]
        finally:
            cluster.close()
    assert counts["defaults"] > 0, counts  # the oracle: Dask samples a busy task by default
    assert counts["build"] == 0, counts
