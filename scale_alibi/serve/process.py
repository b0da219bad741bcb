"""Run the service in a subprocess on a free loopback port: for tests, benchmarks and loaders.

    with ServerProcess(data_dir, workers=1) as server:    # or ServerProcess("s3://bucket/prefix")
        httpx.get(server.url + "/releases")
        server.kill()       # abrupt, like a crash (SIGKILL to the whole process group)
        server.restart()    # same port, so clients keep their URL
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`curate serve` in its own process group on 127.0.0.1; `.url`, `.stop()`, `.kill()`, `.restart()`."""

    def __init__(self, data_dir: str | os.PathLike[str], workers: int = 1, port: int | None = None,
                 cache_mb: int | None = None, startup_timeout: float = 30.0, env: dict[str, str] | None = None,
                 command_prefix: list[str] | None = None, args: list[str] | None = None):
        self.data_dir = os.fspath(data_dir)  # a directory or a bucket URL (s3://bucket/prefix)
        self.workers = workers
        self.port = port or free_port()
        self.cache_mb = cache_mb
        self.startup_timeout = startup_timeout
        self.env = env
        self.command_prefix = list(command_prefix or [])  # e.g. ["taskset", "-c", "1"] for benchmarks
        self.args = list(args or [])  # more `curate serve` options, e.g. ["--header-timeout", "1"]
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Start the server and wait until /health answers 200."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = [*self.command_prefix, sys.executable, "-m", "scale_alibi", "serve", "--data", self.data_dir, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers)]
        if self.cache_mb is not None:
            cmd += ["--cache-mb", str(self.cache_mb)]
        cmd += self.args
        env = {**os.environ, **(self.env or {})}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        # `python -m` puts the working directory first on sys.path (Python >= 3.11 leaves it out with
        # this): a checkout the caller happens to stand in must not shadow the package at `root`.
        env["PYTHONSAFEPATH"] = "1"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # own group: kill() reaches every worker
        self._wait_ready(self.proc)
        return self

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {self.startup_timeout}s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-20000:]

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM), then SIGKILL for whatever is left of the process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # workers that outlived their supervisor
        self.proc.wait()

    def kill(self) -> None:
        """Abrupt death of the whole server (SIGKILL to its process group), as in a crash."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def restart(self, hard: bool = False) -> ServerProcess:
        """Stop (or kill, if `hard`) and start again on the same port."""
        self.kill() if hard else self.stop()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
