"""docker-compose.yml run for real, as a new user would: the images built from the Dockerfile on a
debootstrapped Debian base, then `docker-compose up` of world -> scheduler + workers -> build (and
stats) -> server -> trainer (2 CPU steps), a tile fetched through the compose network, the trainer's
checkpoint read from the volume, and `down -v`. Where no container engine can start, this fails.

Prints one line per service (its result and when it got there) and the time of each phase.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time

import pytest
import yaml

from scale_alibi.serve.process import free_port
from tests.containers import ROOT, build_image, container_engine, docker, ensure_base_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
IMAGE = COMPOSE["x-app"]["image"]
TORCH_VERSION = "2.13.0"  # the README's pin: `pip install torch==2.13.0 ...`
RELEASE = "ci-z17"
STEPS = 2
# Each service and the state that means it did its part.
GOALS = {"world": "healthy", "scheduler": "running", "worker": "running", "build": "exit 0",
         "server": "healthy", "trainer": "exit 0"}

# Run inside a container of the stack (the `trainer` service: the release volume, the compose
# network): one tile over HTTP from the server next to the file and the manifest, the run, and the
# scheduler's dashboard.
PROBE = """
import hashlib, json, pathlib, urllib.request
import pyarrow.parquet as pq
release, steps = {release!r}, {steps}
root = pathlib.Path("/data") / release
row = pq.read_table(root / "manifest.parquet").to_pylist()[0]
z, x, y = row["z"], row["x"], row["y"]
served = urllib.request.urlopen(f"http://server:8000/tiles/{{release}}/s2/{{z}}/{{x}}/{{y}}.png", timeout=30).read()
on_disk = (root / "s2" / str(z) / str(x) / f"{{y}}.png").read_bytes()
run = pathlib.Path("/data/runs") / f"{{release}}-tiny" / "checkpoints"
latest = (run / "latest").read_text().strip() if (run / "latest").is_file() else None
print(json.dumps({{"tile": f"{{z}}/{{x}}/{{y}}", "served_sha256": hashlib.sha256(served).hexdigest(),
                  "disk_sha256": hashlib.sha256(on_disk).hexdigest(), "manifest_sha256": row["hash_s2"],
                  "png": served[:8].hex(), "latest": latest,
                  "checkpoint_files": sorted(p.name for p in (run / latest).iterdir()) if latest else [],
                  "stats": (root / "stats.json").is_file(), "uid": __import__("os").getuid(),
                  "dashboard": urllib.request.urlopen("http://scheduler:8787/status", timeout=30).status}}))
"""

WORKERS = """
import json
from distributed import Client
with Client("tcp://127.0.0.1:8786", timeout=30) as c:
    c.wait_for_workers({n}, timeout=60)
    print(json.dumps([w["memory_limit"] for w in c.scheduler_info()["workers"].values()]))
"""


class Stack:
    """docker-compose of this tree's compose file under its own project name and host ports."""

    def __init__(self, project: str):
        self.project = project
        self.env = {**os.environ, "RELEASE": RELEASE, "TRAIN_STEPS": str(STEPS),
                    "SERVER_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port())}

    def compose(self, *args: str, timeout_s: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["docker-compose", "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args],
                           capture_output=True, text=True, timeout=timeout_s, env=self.env, cwd=ROOT)
        if check and p.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
        return p

    def containers(self) -> dict[str, dict]:
        """`docker inspect` of each service's container (one-off `run` containers left out)."""
        ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", "label=com.docker.compose.oneoff=False", check=False).stdout.split()
        if not ids:
            return {}
        infos = json.loads(docker("inspect", *ids, check=False).stdout or "[]")
        return {i["Config"]["Labels"]["com.docker.compose.service"]: i for i in infos}

    def container(self, service: str) -> str:
        return self.containers()[service]["Id"]


def state(info: dict | None) -> str:
    """'exit N', a health status (starting, healthy, unhealthy) or the container status."""
    if info is None:
        return "absent"
    s = info["State"]
    if s["Status"] == "exited":
        return f"exit {s['ExitCode']}"
    return (s.get("Health") or {}).get("Status") or s["Status"]


def watch(stack: Stack, t0: float, reached: dict[str, tuple[str, float]], stop: threading.Event) -> None:
    """Record, per service, the first time it is at its goal (or has failed), seconds after t0."""
    while not stop.is_set():
        infos = stack.containers()
        for service, goal in GOALS.items():
            now = state(infos.get(service))
            if service not in reached and (now == goal or now.startswith("exit") or now == "unhealthy"):
                reached[service] = (now, time.monotonic() - t0)
        stop.wait(1.0)


def test_compose_up_world_cluster_build_serve_train(tmp_path, capsys):
    phases: dict[str, float] = {}
    lines: list[str] = []
    t_all = time.monotonic()
    cleanup = contextlib.ExitStack()
    try:
        how_engine = cleanup.enter_context(container_engine(tmp_path))
    except RuntimeError as e:
        pytest.fail(f"no container engine: {e}")
    stack = Stack(f"scalealibi{os.getpid()}")
    try:
        t = time.monotonic()
        how_base = ensure_base_image()
        phases[f"base image ({how_base})"] = time.monotonic() - t
        phases["cpu image build"] = build_image("cpu", IMAGE, tmp_path, TORCH_VERSION)

        reached: dict[str, tuple[str, float]] = {}
        stop = threading.Event()
        t_up = time.monotonic()
        watcher = threading.Thread(target=watch, args=(stack, t_up, reached, stop), daemon=True)
        watcher.start()
        try:
            # Returns once every dependency condition held and the trainer was started.
            up = stack.compose("up", "-d", "--no-build", timeout_s=1500, check=False)
            if up.returncode != 0:
                tails = stack.compose("logs", "--no-color", "--tail", "15", check=False).stdout
                pytest.fail(f"docker-compose up failed ({up.returncode}): {up.stderr[-1500:]}\n{tails[-4000:]}")
            docker("wait", stack.container("trainer"), timeout_s=900)
            deadline = time.monotonic() + 10
            while len(reached) < len(GOALS) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            stop.set()
            watcher.join()
        phases["compose up to the trainer's exit"] = time.monotonic() - t_up
        for service in GOALS:
            now, at = reached.get(service, (state(stack.containers().get(service)), time.monotonic() - t_up))
            lines.append(f"{service:9s} {now:8s} at {at:6.1f} s after up")
        logs = {s: stack.compose("logs", "--no-color", s, check=False).stdout for s in ("build", "trainer")}
        assert {s: reached.get(s, ("?",))[0] for s in GOALS} == GOALS, "\n".join(lines) + "\n" + logs["build"][-2000:] + logs["trainer"][-3000:]

        # Workers: the container's limit, divided among its processes, never more than it holds.
        infos = stack.containers()
        limit = infos["worker"]["HostConfig"]["Memory"]
        n_workers = int(stack.env.get("DASK_WORKERS", "2"))
        limits = json.loads(docker("exec", infos["scheduler"]["Id"], "python", "-c", WORKERS.format(n=n_workers)).stdout)
        assert len(limits) == n_workers and 0 < sum(limits) <= limit, (limits, limit)
        lines.append(f"workers   {n_workers} x {limits[0] / 2**30:.2f} GiB within the container's {limit / 2**30:.2f} GiB")

        assert "complete triplets" in logs["build"] and "stats.json" in logs["build"], logs["build"][-2000:]
        assert infos["trainer"]["HostConfig"]["ShmSize"] >= 1 << 30  # the compose file's shm_size
        assert f"steps {STEPS}:" in logs["trainer"], logs["trainer"][-3000:]
        assert "Traceback" not in logs["trainer"] and "unable to allocate shared memory" not in logs["trainer"]

        probe = stack.compose("run", "--rm", "--no-deps", "-T", "trainer", "python", "-c",
                              PROBE.format(release=RELEASE, steps=STEPS), timeout_s=300)
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert seen["png"] == b"\x89PNG\r\n\x1a\n".hex()
        assert seen["served_sha256"] == seen["disk_sha256"] == seen["manifest_sha256"], seen
        assert seen["latest"] == f"step-{STEPS:09d}" and seen["checkpoint_files"], seen
        assert seen["stats"] and seen["uid"] != 0, seen  # curate stats ran; the image runs as non-root
        assert seen["dashboard"] == 200, seen  # bokeh is in the scheduler's image
        lines.append(f"tile      {seen['tile']} through http://server:8000 = the volume's file = the manifest's sha256")
        lines.append(f"trainer   checkpoint {seen['latest']}: {', '.join(seen['checkpoint_files'])}")
    finally:
        t = time.monotonic()
        down = stack.compose("down", "-v", "--remove-orphans", timeout_s=300, check=False)
        left = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}", check=False).stdout.split()
        phases["down -v"] = time.monotonic() - t
        cleanup.close()  # stops dockerd if this test started it
        phases["total"] = time.monotonic() - t_all
        with capsys.disabled():
            print(f"\ncompose stack (engine {how_engine}):")
            for line in lines:
                print(f"  {line}")
            for name, seconds in phases.items():
                print(f"  {name:34s} {seconds:7.1f} s")
    assert down.returncode == 0 and not left, (down.stderr[-2000:], left)
