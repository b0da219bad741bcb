"""A DataLoader worker that cannot deliver a batch is one line that says what to do, never a hang.

Shared memory is made small the way a container makes it (64 MB unless told): the process runs in
its own mount namespace (`unshare --mount`, root) with a small tmpfs on /dev/shm. Real server,
real DataLoader worker processes, real `curate train`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scale_alibi.serve.process import ServerProcess
from tests.release_factory import make_release

RELEASE = "shm"
# One sample is 1.25 MiB of uint8 tensors (s1 2x256², s2 and naip 3x256², naip_hires 3x512²):
# a 4-sample batch's naip_hires alone (3 MiB) cannot fit in 2 MiB, and 64 MiB holds every
# batch in flight (2 workers x prefetch 2, and the one being read).
SMALL_SHM, ENOUGH_SHM = "2m", "64m"
TIMEOUT_S = 300  # generous on a loaded 2-core machine; the old code never ends at all


def small_shm(size: str, argv: list[str]) -> list[str]:
    """`argv` in a mount namespace of its own whose /dev/shm is a tmpfs of `size`."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size="$0" tmpfs /dev/shm && exec "$@"', size, *argv]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shm-data")
    make_release(root, RELEASE, nx=6, ny=4)  # 24 triplets, every 4th held out: 18 train
    return root


@pytest.fixture(scope="module")
def server(data_root):
    with ServerProcess(data_root) as proc:
        yield proc


LOADER_EPOCH = textwrap.dedent("""
    import hashlib, json, sys
    from scale_alibi.model.data.loader import TripletStream, make_loader
    ds = TripletStream(sys.argv[1], sys.argv[2], shard_size=5, seed=1, shuffle_buffer=4)
    out = []
    try:
        for b in make_loader(ds, batch_size=4, num_workers=2):
            for i in range(b["z"].shape[0]):
                out.append([int(b["z"][i]), int(b["x"][i]), int(b["y"][i]),
                            hashlib.sha256(b["s2"][i].numpy().tobytes()).hexdigest()])
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e), "samples": out}))
        sys.exit(3)
    print(json.dumps({"samples": out}))
""")


def run_epoch(server, shm: str) -> tuple[int, dict, str]:
    p = subprocess.run(small_shm(shm, [sys.executable, "-c", LOADER_EPOCH, server.url, RELEASE]),
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.stdout.strip(), f"no result (exit {p.returncode}): {p.stderr[-3000:]}"
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def disk_s2(root: Path) -> dict[tuple[int, int, int], str]:
    """The train split read from the manifest file, each tile's S2 pixels decoded by Pillow as (C, H, W)."""
    rows = pq.read_table(root / RELEASE / "manifest.parquet").to_pylist()
    out = {}
    for r in rows:
        if r["split"] == "train":
            path = root / RELEASE / "s2" / str(r["z"]) / str(r["x"]) / f"{r['y']}.png"
            chw = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))
            out[(r["z"], r["x"], r["y"])] = hashlib.sha256(chw.tobytes()).hexdigest()
    return out


def test_with_enough_shared_memory_every_train_triplet_arrives_exactly_once(server, data_root):
    rc, result, stderr = run_epoch(server, ENOUGH_SHM)
    assert rc == 0, result
    truth = disk_s2(data_root)
    got = [(z, x, y) for z, x, y, _ in result["samples"]]
    assert Counter(got) == Counter(truth.keys()) and len(got) == 18  # each train triplet once, nothing else
    assert all(truth[(z, x, y)] == h for z, x, y, h in result["samples"])  # its own pixels
    assert "Traceback" not in stderr


def test_a_full_dev_shm_is_an_error_not_a_silent_empty_epoch(server):
    rc, result, _ = run_epoch(server, SMALL_SHM)
    assert rc == 3 and result["error"] == "BatchNotDelivered", result
    assert "\n" not in result["message"] and "/dev/shm is 2 MiB" in result["message"]
    assert "shm_size" in result["message"] and "--num-workers" in result["message"]


KILL_A_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    import psutil
    from scale_alibi.model.data.loader import TripletStream, make_loader
    ds = TripletStream(sys.argv[1], sys.argv[2], shard_size=5, seed=1, shuffle_buffer=4)
    it = iter(make_loader(ds, batch_size=2, num_workers=2))
    next(it)
    me = psutil.Process()
    workers = [c for c in me.children() if c.cmdline() == me.cmdline()]  # forked DataLoader workers
    victim = workers[0].pid
    result = {"victim": victim, "workers": len(workers)}
    try:  # the main thread busy elsewhere, as in a training step or the progress bar's write
        os.kill(victim, signal.SIGKILL)  # as the out-of-memory killer does
        os.waitid(os.P_PID, victim, os.WEXITED | os.WNOWAIT)  # dead now (left unreaped for the DataLoader)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2:
            sum(range(1000))
    except BaseException as e:
        result["elsewhere"] = f"{type(e).__name__}: {e}"
    t0 = time.monotonic()
    try:
        while True:
            next(it)
    except BaseException as e:
        result["next"] = [type(e).__name__, str(e), round(time.monotonic() - t0, 2)]
    result["left"] = [c.pid for c in me.children() if c.status() != psutil.STATUS_ZOMBIE]
    print(json.dumps(result))
""")


def test_a_killed_worker_is_reported_by_next_and_nowhere_else(server):
    # torch's SIGCHLD handler raised wherever the main thread was: in a finally (a traceback), inside
    # the progress bar's lock (a hang). Here the main thread is elsewhere when the worker dies.
    p = subprocess.run([sys.executable, "-c", KILL_A_WORKER, server.url, RELEASE],
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["workers"] == 2, result
    assert "elsewhere" not in result, result  # nothing raised outside next()
    kind, message, waited_s = result["next"]
    assert kind == "BatchNotDelivered", result
    assert f"DataLoader worker (pid {result['victim']}) was killed by SIGKILL" in message and "\n" not in message
    assert "give the container more memory" in message
    assert result["left"] == [], result  # the other worker was stopped with the error, not left running
    print(f"{message} ({waited_s} s in next())")


def train_argv(server, out: Path, steps: int, batch_size: int = 4, source: list[str] | None = None) -> list[str]:
    """`curate train` of the release from the server (or from `source`, e.g. ["--data", root])."""
    return [sys.executable, "-m", "scale_alibi", "train", *(source or ["--server", server.url]), "--release", RELEASE,
            "--config", "tiny", "--steps", str(steps), "--batch-size", str(batch_size), "--num-workers", "2",
            "--eval-tiles", "0", "--checkpoint-every", "0", "--out", str(out)]


def assert_one_error_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("read", ["server", "store"])
def test_curate_train_with_a_full_dev_shm_exits_with_one_line(server, data_root, tmp_path, read):
    source = ["--data", str(data_root)] if read == "store" else None  # the store: the map-style dataset
    t0 = time.monotonic()
    p = subprocess.run(small_shm(SMALL_SHM, train_argv(server, tmp_path / "run", steps=3, source=source)),
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 2, p.stderr[-3000:]
    line = assert_one_error_line(p.stderr, "shared memory", "/dev/shm is 2 MiB", "shm_size")
    print(f"{line} ({time.monotonic() - t0:.1f} s)")
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()


def test_curate_train_finishes_its_steps_with_enough_shared_memory(server, tmp_path):
    p = subprocess.run(small_shm(ENOUGH_SHM, train_argv(server, tmp_path / "run", steps=3)),
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "steps 3:" in p.stdout
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


STEPS = re.compile(r"\| (\d+)/100000 ")  # the progress bar's count of steps done
# The 18 train triplets in batches of 2: 9 steps an epoch, from the server (one shard of 32, all
# in worker 0: worker 1 has nothing and is ended at the epoch's second step) or from the store
# (batches dealt to both workers in turn). Worker 0 lives until its epoch's 9th batch is taken.
STEPS_PER_EPOCH = 9


def dataloader_workers(trainer: psutil.Process) -> list[psutil.Process]:
    """The trainer's live DataLoader workers, in the order they started: forked children running the
    trainer's own command line."""
    found = []
    for child in trainer.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline() == trainer.cmdline():
                found.append(child)
        except psutil.Error:  # gone meanwhile
            pass
    return sorted(found, key=lambda p: p.pid)


def steps_done(stderr: Path) -> int:
    counts = STEPS.findall(stderr.read_text())
    return int(counts[-1]) if counts else 0


@pytest.mark.parametrize("read", ["server", "store"])
def test_a_killed_dataloader_worker_stops_curate_train_with_one_line(server, data_root, tmp_path, read):
    source = ["--data", str(data_root)] if read == "store" else None
    # Files, not pipes: a pipe that nobody reads while the test waits fills up and stalls the trainer.
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        # A session of its own, so that whatever is left of it can be killed as one group.
        proc = subprocess.Popen(train_argv(server, tmp_path / "run", steps=100_000, batch_size=2, source=source),
                                stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        trainer = psutil.Process(proc.pid)
        deadline = time.monotonic() + TIMEOUT_S
        victim, others = None, []
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            # Mid-epoch (steps 1-5 of 9 done: the bar lags a step at most), worker 0 is busy and
            # stays so for some steps: a kill then never meets a worker that is ending anyway.
            if 1 <= steps_done(err) % STEPS_PER_EPOCH <= 5:
                workers = dataloader_workers(trainer)
                try:
                    if workers:
                        workers[0].send_signal(signal.SIGKILL)  # as the out-of-memory killer does
                        victim, others = workers[0], workers[1:]
                except psutil.NoSuchProcess:  # an epoch ended after all: find the next one's
                    pass
            time.sleep(0.2)
        assert victim is not None, f"no DataLoader worker to kill (exit {proc.poll()}): {err.read_text()[-3000:]}"
        killed_at = steps_done(err)
        t0 = time.monotonic()
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"curate train still runs {TIMEOUT_S} s after its worker {victim.pid} was killed "
                        f"(step {killed_at}): {err.read_text()[-3000:]}")
        waited_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    stderr_text = err.read_text()
    assert proc.returncode == 2, stderr_text[-3000:]
    line = assert_one_error_line(stderr_text, f"DataLoader worker (pid {victim.pid}) was killed by SIGKILL", "more memory")
    # the trainer's other workers do not outlive it (an orphan would go on holding memory)
    _, alive = psutil.wait_procs(others, timeout=10)
    assert not [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()
    print(f"{line} (killed after step {killed_at}, {len(others)} other worker(s); {waited_s:.1f} s to exit 2)")
