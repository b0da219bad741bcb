"""A container engine for tests: dockerd (started when none answers, stopped after), a Debian base
image made with debootstrap (cached as a tar under the user's cache directory), the images of the
Dockerfile built from a copy of this tree, and pip's own sources (CA bundle, local wheels) handed
to the image build the way the Dockerfile documents.

Nothing here skips: where no engine can start, the caller fails.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "scale-alibi-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scale-alibi"
BASE_TAR = CACHE_DIR / "debootstrap-bookworm-minbase.tar"
WHEELS_PORT = 8099  # the local wheel directory's loopback port during image builds
# What the image's build context needs of the tree (the Dockerfile's COPY lines).
CONTEXT = ("Dockerfile", "pyproject.toml", "README.md", "scale_alibi", "docker")


def docker(*args: str, timeout_s: float = 600, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker ARGS`; with `check`, a failure raises RuntimeError with the end of its output."""
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return p


def engine_answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout_s=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def container_engine(log_dir: Path, start_timeout_s: float = 90) -> Iterator[str]:
    """A running dockerd; yields how it was found ("running" or "started"). One that this started
    is stopped afterwards. RuntimeError (with the daemon's log) when none can start."""
    if shutil.which("docker") is None:
        raise RuntimeError("no docker command; install docker.io (Debian) or another Docker engine")
    if engine_answers():
        yield "running"
        return
    if shutil.which("dockerd") is None:
        raise RuntimeError("no Docker engine answers and there is no dockerd to start; install docker.io")
    log = (log_dir / "dockerd.log").open("wb")
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not engine_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (log_dir / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dockerd did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield "started"
    finally:
        proc.terminate()  # dockerd stops its containers and removes its socket on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def ensure_base_image() -> str:
    """BASE_IMAGE in the engine: already there, imported from the cached tar, or debootstrapped now
    (about a minute from Debian's archive) and cached for the next run. Returns what it did."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return "present"
    how = "cached tar"
    if not BASE_TAR.is_file():
        how = "debootstrapped"
        BASE_TAR.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=BASE_TAR.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                            str(rootfs), "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
            partial = Path(tmp) / "base.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=300)
            partial.rename(BASE_TAR)  # whole or absent: a rerun never imports a half-written tar
    docker("import", str(BASE_TAR), BASE_IMAGE, timeout_s=600)
    return how


def pip_setting(name: str) -> str | None:
    """A value of pip's own configuration (`pip config list`), e.g. cert or find-links."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] == name:
            return value.strip().strip("'\"") or None
    return os.environ.get(f"PIP_{name.upper().replace('-', '_')}") or None


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Static files without a log line per request (pip asks for the index once per package)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served_directory(path: Path) -> Iterator[str]:
    """`path` over HTTP on loopback (what the image build's WHEELS_URL reaches with --network host)."""
    handler = functools.partial(QuietFiles, directory=str(path))
    try:  # one fixed port when free: the URL is a build argument, and a new value rebuilds its layers
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELS_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_image(target: str, tag: str, work: Path, torch_version: str) -> float:
    """`docker build --target TARGET` of a copy of this tree on BASE_IMAGE; seconds it took.

    pip inside the build trusts this machine's CA bundle (copied into docker/local/) and takes the
    CPU torch wheel from this machine's local wheel directory when it has one (served on loopback).
    """
    context = work / "context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for name in CONTEXT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / name)
    for stray in (context / "docker" / "local").iterdir():
        if stray.name != "README.md":
            stray.unlink()
    cert = pip_setting("cert")
    if cert and Path(cert).is_file():
        shutil.copy(cert, context / "docker" / "local" / "ca-bundle.crt")
    links = pip_setting("find-links")
    wheels = Path(links.split()[0]) if links else None
    local_torch = wheels is not None and any(wheels.glob(f"torch-{torch_version}+cpu-*.whl"))
    args = ["build", "--network", "host", "--target", target, "-t", tag, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    t0 = time.monotonic()
    if local_torch:
        assert wheels is not None
        with served_directory(wheels) as url:
            docker(*args, "--build-arg", "TORCH_INDEX=", "--build-arg", f"WHEELS_URL={url}", str(context), timeout_s=1800)
    else:
        docker(*args, str(context), timeout_s=1800)
    return time.monotonic() - t0
