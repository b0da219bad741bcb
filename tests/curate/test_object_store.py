"""curate build into an object store (a real S3-protocol server on loopback, `moto_server`): the same
bytes as a local build, resume after a kill -9, one build per release (a lease), damage found and
re-cut, and bad buckets reported in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shapely.geometry import box

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import Release
from scale_alibi.contract.storage import remote_filesystem
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
from scale_alibi.curate.pipeline.object_output import ObjectOutput
from tests.release_factory import file_tree

QUIET = {"signer": "none", "progress": False, "echo": lambda m: None}
LEASE_S_ENV = "SCALE_ALIBI_LEASE_S"  # the lease age, shortened by the tests that stall a build past it
BUILD = {"zoom": 16, "release": "mid", "metatile_levels": 1}  # 2x2-tile metatiles: several to resume from


def _region(world):
    w, s, e, n = world.bbox
    return box(w + 0.3 * (e - w), s + 0.3 * (n - s), w + 0.7 * (e - w), s + 0.7 * (n - s))


@pytest.fixture(scope="module")
def local(world, tmp_path_factory) -> Release:
    """The reference: the same release built into a local directory in this process."""
    root = tmp_path_factory.mktemp("local")
    build_release(root, resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                  RunOptions(scheduler="synchronous", **QUIET))
    return Release(root, BUILD["release"])



def _bucket_tree(url: str) -> dict[str, bytes]:
    fs, root = remote_filesystem(url)
    keys = fs.find(root)
    return {key[len(root) + 1:]: fs.cat_file(key) for key in sorted(keys)}


def test_a_build_on_a_local_cluster_into_a_bucket_is_byte_identical_to_a_local_build(world, local, s3_bucket):
    out = f"{s3_bucket}/releases"
    result = build_release(out, resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                           RunOptions(workers=2, **QUIET))
    assert result.triplets > 4 and result.location == f"{out}/{BUILD['release']}"
    # Every object, manifest included; no lease, done record or staging object is left.
    assert _bucket_tree(f"{out}/{BUILD['release']}") == file_tree(local.path)

    world.files.reset_stats()
    again = build_release(out, resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                          RunOptions(scheduler="synchronous", **QUIET))
    assert again.already_finished and world.files.stats()["bytes"] == 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from scale_alibi.cli.main import main; main()", *args]


def test_a_build_into_a_bucket_killed_mid_way_resumes_and_ends_byte_identical(world, local, s3_bucket):
    out = f"{s3_bucket}/k"
    w, s, e, n = _region(world).bounds
    args = _cli("build", "--bbox", f"{w},{s},{e},{n}", "--zoom", "16", "--release", "mid", "--metatile", "1",
                "--out", out, "--catalog", world.stac_url, "--signer", "none", "--scheduler", "synchronous",
                "--no-progress")
    fs, root = remote_filesystem(out)
    done = f"{root}/mid/.build/done"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        recorded = len(fs.ls(done)) if fs.exists(done) else 0
        if recorded >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not fs.exists(f"{root}/mid/manifest.parquet")  # killed before the end: no release exists yet
    assert fs.exists(f"{root}/mid/.lock")  # the killed build's lease, taken over at once on this machine

    world.files.reset_stats()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = re.search(r"in (\d+) metatiles \((\d+) already done\)", rerun.stderr)
    assert resumed, rerun.stderr[-2000:]
    assert recorded <= int(resumed[2]) < int(resumed[1])  # what the killed build finished is not cut again
    assert _bucket_tree(f"{out}/mid") == file_tree(local.path)


def test_a_second_build_of_a_release_in_a_bucket_is_refused_while_the_first_holds_its_lease(world, s3_bucket):
    output = ObjectOutput(f"{s3_bucket}/l", "mid")
    with output.lock():
        with pytest.raises(UserError, match="another build is writing release mid"):
            build_release(f"{s3_bucket}/l", resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                          RunOptions(scheduler="synchronous", **QUIET))
        with pytest.raises(UserError, match="another build is writing"):
            with ObjectOutput(f"{s3_bucket}/l", "mid").lock():
                pass
    fs, root = remote_filesystem(f"{s3_bucket}/l")
    assert not fs.exists(f"{root}/mid/.lock")  # released on exit


def test_damage_in_a_bucket_is_found_by_verify_and_re_cut_by_a_rerun(world, local, s3_bucket, tmp_path):
    from click.testing import CliRunner

    from scale_alibi.cli.main import main as cli

    out = f"{s3_bucket}/d"
    build_release(out, resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                  RunOptions(scheduler="synchronous", **QUIET))
    fs, root = remote_filesystem(out)
    tiles = sorted(k for k in fs.find(f"{root}/mid") if k.endswith(".png"))
    deleted, truncated, flipped = tiles[0], tiles[5], tiles[9]
    fs.rm(deleted)
    fs.pipe_file(truncated, fs.cat_file(truncated)[:-20])
    data = bytearray(fs.cat_file(flipped))
    data[len(data) // 2] ^= 1
    fs.pipe_file(flipped, bytes(data))

    checked = CliRunner().invoke(cli, ["verify", "--data", out, "--release", "mid", "--no-progress"])
    assert checked.exit_code == 1, checked.output
    named = {line.split(": ")[1] for line in checked.output.splitlines() if line.startswith("damaged: ")}
    assert named == {k[len(root) + len("/mid/"):] for k in (deleted, truncated, flipped)}

    # A rerun's cheap check (presence and PNG end) re-cuts the deleted and truncated files...
    build_release(out, resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                  RunOptions(scheduler="synchronous", **QUIET))
    # ...and `verify --repair` the bit flip, which only a full hash finds.
    repaired = CliRunner().invoke(cli, ["verify", "--data", out, "--release", "mid", "--repair", "--signer", "none",
                                        "--no-progress"])
    assert repaired.exit_code == 0, repaired.output
    assert _bucket_tree(f"{out}/mid") == file_tree(local.path)


def test_a_bucket_that_does_not_exist_is_one_error_line_and_exit_2(world, s3_bucket):
    missing = "s3://" + "no-such-bucket-" + s3_bucket.rsplit("-", 1)[-1]
    w, s, e, n = _region(world).bounds
    done = subprocess.run(_cli("build", "--bbox", f"{w},{s},{e},{n}", "--zoom", "16", "--out", f"{missing}/x",
                               "--catalog", world.stac_url, "--signer", "none", "--no-progress"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write to s3://no-such-bucket-"), done.stderr
    assert "bucket exists" in lines[0]


def test_a_protocol_without_its_library_names_the_package_to_install(tmp_path: Path):
    from click.testing import CliRunner

    from scale_alibi.cli.main import main as cli

    done = CliRunner().invoke(cli, ["build", "--bbox", "-100,40,-99.9,40.1", "--zoom", "12", "--out",
                                    "gs://bucket/x", "--catalog", "http://127.0.0.1:9", "--signer", "none"])
    assert done.exit_code == 2
    assert "pip install gcsfs" in done.output


def test_a_build_into_a_store_that_accepts_and_never_answers_fails_with_one_line_within_its_timeout(tmp_path):
    from tests.object_store import s3_environment, silent_endpoint

    with silent_endpoint() as endpoint:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(s3_environment(endpoint))
        t0 = time.monotonic()
        done = subprocess.run(_cli("build", "--bbox", "-100,40,-99.99,40.01", "--zoom", "14", "--out", "s3://b/x",
                                   "--catalog", "http://127.0.0.1:9", "--signer", "none", "--timeout", "1",
                                   "--no-progress"),
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        elapsed = time.monotonic() - t0
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: cannot write to s3://b/x") and "no answer within 1 s, 3 tries" in lines[0]
    # 3 tries of a 1 s read timeout, their backoff and the interpreter's start: not the library's minutes.
    assert elapsed < 30, elapsed


def test_an_unreadable_lease_is_treated_as_held_and_left_in_place(world, s3_bucket):
    fs, root = remote_filesystem(f"{s3_bucket}/g")
    fs.pipe_file(f"{root}/mid/.lock", b"\x00 not a lease")
    with pytest.raises(UserError, match="lease .* is unreadable, so it is treated as held"):
        build_release(f"{s3_bucket}/g", resolve_request(region=_region(world), catalog=world.stac_url, **BUILD),
                      RunOptions(scheduler="synchronous", **QUIET))
    assert fs.cat_file(f"{root}/mid/.lock") == b"\x00 not a lease"
    assert not fs.exists(f"{root}/mid/.build")  # nothing written


@pytest.mark.parametrize("store", ["s3", "memory"])  # the store's own If-Match, and compare-then-write elsewhere
def test_a_build_whose_lease_was_taken_over_writes_nothing_more_and_leaves_the_new_lease_alone(store, request,
                                                                                             monkeypatch):
    import json
    import uuid

    monkeypatch.setenv(LEASE_S_ENV, "0.4")  # renewals every 0.1 s
    url = f"{request.getfixturevalue('s3_bucket')}/t" if store == "s3" else f"memory://lease-{uuid.uuid4().hex}"
    fs, root = remote_filesystem(url)
    output = ObjectOutput(url, "mid")
    successor = json.dumps({"host": "elsewhere", "pid": 1, "renewed": time.time(), "token": "another build's"}).encode()
    with pytest.raises(UserError, match="lost its lease .* names elsewhere pid 1"):
        with output.lock():
            output.write("a.txt", b"before")
            fs.pipe_file(f"{root}/mid/.lock", successor)  # what a takeover leaves after this build stalled
            time.sleep(0.5)  # several renewals: each must be refused, none may overwrite the successor's lease
            assert fs.cat_file(f"{root}/mid/.lock") == successor
            output.write("b.txt", b"after")
    assert fs.cat_file(f"{root}/mid/.lock") == successor  # not deleted by the build that lost it
    assert fs.exists(f"{root}/mid/a.txt") and not fs.exists(f"{root}/mid/b.txt")


def test_a_build_stopped_past_its_lease_age_stops_before_writing_once_another_build_took_over(
        world, local, s3_bucket, tmp_path):
    from click.testing import CliRunner

    from scale_alibi.cli.main import main as cli

    lease_s = 4.0
    out = f"{s3_bucket}/s"
    w, s, e, n = _region(world).bounds
    args = _cli("build", "--bbox", f"{w},{s},{e},{n}", "--zoom", "16", "--release", "mid", "--metatile", "1",
                "--out", out, "--catalog", world.stac_url, "--signer", "none", "--scheduler", "synchronous",
                "--no-progress")
    env = {**os.environ, LEASE_S_ENV: str(lease_s)}
    fs, root = remote_filesystem(out)
    lease, done = f"{root}/mid/.lock", f"{root}/mid/.build/done"
    a = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and a.poll() is None:
            if fs.exists(done) and len(fs.ls(done)) >= 1:
                break
            time.sleep(0.05)
        assert a.poll() is None, a.stderr.read().decode()[-2000:]
        os.kill(a.pid, signal.SIGSTOP)  # a build stalled (a long GC pause, a suspended VM, a debugger)
        a_lease = fs.cat_file(lease)
        time.sleep(lease_s + 1)
        b = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        while time.monotonic() < deadline and b.poll() is None and fs.cat_file(lease) == a_lease:
            time.sleep(0.05)
        assert b.poll() is None and fs.cat_file(lease) != a_lease, b.stderr.read().decode()[-2000:]  # B took over
        os.kill(a.pid, signal.SIGCONT)  # A wakes while B writes
        a_err = a.communicate(timeout=120)[1].decode()
        b_err = b.communicate(timeout=240)[1].decode()
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.wait()
    assert b.returncode == 0, b_err[-2000:]
    errors = [line for line in a_err.splitlines() if line.startswith("error:")]
    assert a.returncode == 2 and len(errors) == 1 and "lost its lease" in errors[0], a_err[-2000:]
    assert "Traceback" not in a_err
    # One build's release, whole: every object as the local reference build, no done record, staging
    # object or lease left (A neither wrote a record after B sealed nor deleted B's lease).
    assert _bucket_tree(f"{out}/mid") == file_tree(local.path)
    checked = CliRunner().invoke(cli, ["verify", "--data", out, "--release", "mid", "--no-progress"])
    assert checked.exit_code == 0, checked.output
