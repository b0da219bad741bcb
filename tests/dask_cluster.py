"""A Dask cluster of real `dask scheduler` and `dask worker` processes on loopback, for tests and
benchmarks: start it, find which worker process runs what, kill one, add one, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).with_name("dask")  # the venv's `dask` command, as a user would run it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    """This checkout first on the workers' path, so they import the code under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (empty when it is gone)."""
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass
class DaskCluster:
    """Handles on a running scheduler and its `dask worker` commands (each one nanny + one worker)."""

    address: str
    scheduler: subprocess.Popen
    memory_limit: str
    local_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen:
        """Start one more `dask worker --nthreads 1` (it joins asynchronously)."""
        cmd = [str(DASK), "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
               "--memory-limit", self.memory_limit, "--local-directory", str(self.local_dir)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env())
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout_s: float = 60.0) -> None:
        """Block until the scheduler knows `n` workers."""
        from dask.distributed import Client

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with Client(self.address, timeout="2s") as client:
                    if len(client.scheduler_info()["workers"]) >= n:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} dask workers did not join {self.address} in {timeout_s:.0f} s")
            time.sleep(0.3)

    def command_of(self, worker_pid: int) -> subprocess.Popen:
        """The `dask worker` command whose process tree holds the worker process `worker_pid`."""
        for proc in self.workers:
            if any(p.pid == worker_pid for p in process_tree(proc.pid)):
                return proc
        raise LookupError(f"no dask worker command runs pid {worker_pid}")

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a worker command's whole process tree (nanny and worker): no clean shutdown."""
        for p in reversed(process_tree(proc.pid)):
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait()

    def stop(self) -> None:
        """Terminate every process this cluster started (kill what does not exit)."""
        procs = [*self.workers, self.scheduler]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(proc)


@contextmanager
def dask_cluster(workers: int, memory_limit: str, local_dir: Path) -> Iterator[DaskCluster]:
    """`dask scheduler` + `workers` x `dask worker --nthreads 1` on loopback, stopped on exit."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 cwd=ROOT, env=_env())
    cluster = DaskCluster(address, scheduler, memory_limit, local_dir)
    try:
        for _ in range(workers):
            cluster.start_worker()
        cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.stop()
