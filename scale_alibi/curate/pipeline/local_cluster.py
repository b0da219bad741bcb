"""The Dask cluster a build starts itself (`--scheduler local`, the default): its settings, and the
forkserver its worker processes are forked from.

The workers fork from one server process that imported `distributed` and the build's modules once,
instead of each freshly spawned interpreter importing them again (about 0.4 CPU-seconds per
worker; where the platform has no forkserver, workers are spawned). The driver starts that server
as soon as it knows the build will cut (`start_worker_forkserver`), so its imports run while the
driver opens the catalog and plans the region, and keeps it for the next build of this process
while nothing it was started with has changed (see `start_worker_forkserver`).
"""

from __future__ import annotations

import logging
import os
import sys

from scale_alibi.contract.errors import UserError

# Housekeeping intervals of the Dask cluster a build starts itself: the defaults wake every process
# every 20 ms (an event-loop lag probe) and check worker memory every 100 ms: an idle one-worker
# cluster spent 68.4 ms of CPU per second, 35.8 with these (`pytest -s tests/curate/test_local_cluster.py`,
# busy 2-core machine), so a build's CPU per tile grew with its wall time. Memory is still checked
# twice a second. Each worker's statistical profiler (the dashboard's Profile page) is off too: it
# wakes every 10 ms and walks the running task's stack; without it the idle cluster of that test
# spent 10.0 ms per second against 57.5 with Dask's defaults (same run, busy machine).
LOCAL_CLUSTER_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.scheduler.work-stealing-interval": "1s",
    "distributed.worker.profile.enabled": False,
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to the OS for its
    # memory monitor). Setting it pins glibc's mmap threshold at 128 KiB: every array a task frees is
    # unmapped and the next one is faulted in anew, page by page. Without it a worker reuses freed
    # memory as this process does from its first task on (the test
    # tests/curate/test_local_cluster.py::test_a_build_worker_reuses_freed_memory counts the faults);
    # cut_metatile then keeps even the arrays above glibc's largest threshold
    # (scale_alibi.contract.host_memory), on any cluster. A MALLOC_TRIM_THRESHOLD_ the user sets in the
    # environment still reaches the workers.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
# What the forkserver imports before it forks any worker (in place of the packages distributed would
# preload, pandas among them: nothing a build task uses).
WORKER_PRELOAD = ("distributed", "scale_alibi.curate.pipeline.metatile", "scale_alibi.curate.pipeline.choose",
                  "scale_alibi.curate.reader", "scale_alibi.curate.warp", "scale_alibi.curate.encode",
                  "scale_alibi.curate.selection", "scale_alibi.curate.search")
LOCAL_PROCESS_SCHEDULERS = (None, "local", "processes")  # --scheduler values that start worker processes here

# What the running forkserver was started with: this process's environment and the modification
# times of this package's modules then (None: no forkserver of ours runs).
_forkserver_basis: tuple[dict[str, str], dict[str, int]] | None = None


def local_cluster_config() -> dict:
    """LOCAL_CLUSTER_CONFIG, with forked workers where the platform can (see WORKER_PRELOAD)."""
    import multiprocessing

    config: dict = dict(LOCAL_CLUSTER_CONFIG)
    if "forkserver" in multiprocessing.get_all_start_methods():
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    return config


def nanny_pre_spawn_environ() -> dict[str, str]:
    """The variables a Dask nanny sets in this process's environment before it starts a worker
    process, as distributed.nanny.Nanny computes them (distributed.nanny.pre-spawn-environ, a value
    exported in the environment winning; PYTHONHASHSEED so that every worker hashes alike)."""
    import dask

    config = dask.config.get("distributed.nanny.pre-spawn-environ")
    env = {name: os.environ.get(name, str(value)) for name, value in config.items() if value is not None}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"  # distributed's own choice (dask/distributed#8400)
    return env


def _package_mtimes(paths: list[str] | None = None) -> dict[str, int]:
    """Modification times of `paths`, or of every module of this package loaded in this process."""
    if paths is None:
        paths = [f for name, m in list(sys.modules.items())
                 if name.startswith("scale_alibi.") and (f := getattr(m, "__file__", None))]
    mtimes = {}
    for path in paths:
        try:
            mtimes[path] = os.stat(path).st_mtime_ns
        except OSError:
            mtimes[path] = -1
    return mtimes


def start_worker_forkserver() -> None:
    """Start the forkserver the local cluster's workers fork from, now (it boots in its own process:
    this returns at once), preloading WORKER_PRELOAD; or keep the one already running.

    A forkserver keeps the environment and the code it started with and hands them to every process
    it forks. It is kept for a later build of this process only while both are as they were: the
    environment identical (an S3 endpoint or credentials set since reach the next build's workers)
    and no module of this package modified on disk since (an edited package is imported anew).
    Otherwise it is stopped and started again."""
    global _forkserver_basis
    import multiprocessing.forkserver

    import dask
    from distributed.proctitle import enable_proctitle_on_children
    from distributed.utils import get_mp_context

    with dask.config.set(local_cluster_config()):
        context = get_mp_context()  # reads the multiprocessing method from the config in force
        if context.get_start_method() != "forkserver":
            return
        # What a nanny sets in this process's environment as it starts a worker, set before the server
        # starts (it imports numpy with OMP_NUM_THREADS there), as when the nanny started it.
        os.environ.update(nanny_pre_spawn_environ())
        enable_proctitle_on_children()
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    environ = dict(os.environ)
    if _forkserver_basis is None or _forkserver_basis[0] != environ or \
            _forkserver_basis[1] != _package_mtimes(list(_forkserver_basis[1])):
        stop_worker_forkserver()  # one another library started too: it preloads what that library chose
        context.set_forkserver_preload(list(WORKER_PRELOAD))  # type: ignore[attr-defined]
        _forkserver_basis = (environ, _package_mtimes())
    server.ensure_running()  # starts it again if it died


def stop_worker_forkserver() -> None:
    """Stop this process's forkserver, if one runs (the next build starts a new one, as a build in a new
    process does): it holds its imports' memory until this process exits."""
    global _forkserver_basis
    import multiprocessing.forkserver

    # No public way to stop it; the stdlib's own tests use this one (a no-op when none runs).
    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
    _forkserver_basis = None


def start_local_cluster(scheduler: str | None, workers: int):
    """The cluster a build starts itself: `workers` one-thread worker processes (scheduler None, "local"
    or "processes") or one worker process with `workers` threads ("threads"), with local_cluster_config()."""
    import dask
    from dask.distributed import LocalCluster

    if scheduler in LOCAL_PROCESS_SCHEDULERS:
        start_worker_forkserver()  # kept if the driver started it already and nothing changed since
    with dask.config.set(local_cluster_config()):  # read by the scheduler, nannies and workers as they start
        if scheduler == "threads":
            return LocalCluster(n_workers=1, threads_per_worker=workers, processes=False, dashboard_address=":0")
        if scheduler in LOCAL_PROCESS_SCHEDULERS:
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                silence_logs=logging.ERROR)
    raise UserError(f"unknown --scheduler {scheduler!r}; use local, threads, synchronous or tcp://HOST:PORT")
