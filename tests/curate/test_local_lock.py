"""The lock of a release built into a local directory (`OUT/<release>/.lock`, an flock): a lock file
that is not a regular file is one line, unreadable bytes are treated as held, and a lock file
replaced under a running build neither admits a second build nor is removed by the first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.pipeline.local_output import LocalOutput


def _build(out: Path) -> subprocess.CompletedProcess:
    # The lock is taken before the catalog is asked: a catalog nobody serves is never reached.
    return subprocess.run([sys.executable, "-m", "scale_alibi", "build", "--bbox", "-100,40,-99.99,40.01", "--zoom",
                           "14", "--out", str(out), "--release", "r", "--catalog", "http://127.0.0.1:9", "--signer",
                           "none", "--no-progress", "--timeout", "1"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["directory", "symlink loop"])
def test_a_lock_that_is_not_a_regular_file_is_one_error_line(tmp_path, kind):
    lock = tmp_path / "out" / "r" / ".lock"
    lock.parent.mkdir(parents=True)
    if kind == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(".lock")  # a link to itself: ELOOP
    done = _build(tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot open the lock file {lock}") and "must be a regular file" in lines[0]
    assert lock.is_symlink() or lock.is_dir()  # left as it was


def test_a_lock_holding_garbage_is_treated_as_held_not_taken_over(tmp_path):
    lock = tmp_path / "out" / "r" / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"\x00garbage, not a holder")
    done = _build(tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "is unreadable, so it is treated as held" in lines[0], lines
    assert lock.read_bytes() == b"\x00garbage, not a holder"


def test_a_lock_file_replaced_under_a_running_build_admits_no_second_build_and_is_not_removed_by_the_first(tmp_path):
    out = tmp_path / "out"
    first = LocalOutput(out, "r")
    first.check_writable()
    lock = first.path / ".lock"
    with first.lock():
        replacement = first.path / ".lock.new"
        replacement.write_bytes(b"garbage written over a running build's lock")
        os.replace(replacement, lock)  # a new file at the lock's path: the running build's flock is not on it
        with pytest.raises(UserError, match="treated as held"):
            with LocalOutput(out, "r").lock():
                pass
    assert lock.read_bytes() == b"garbage written over a running build's lock"  # the first build left it alone


def test_a_killed_builds_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    first = LocalOutput(out, "r")
    first.check_writable()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = first.path / ".lock"
    lock.write_text(json.dumps({"host": "h", "pid": int(dead.stdout), "renewed": 0, "token": "t"}))  # no flock
    with first.lock():
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    assert not lock.exists()
