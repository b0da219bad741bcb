"""curate build runs: retried and re-signed reads, an existing Dask scheduler, failing scenes resumed,
damaged done metatiles re-cut, and user errors."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from shapely.geometry import box

from scale_alibi.contract.release import Release
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
from tests.release_factory import file_tree

QUIET = {"signer": "none", "progress": False, "echo": lambda m: None}



# --------------------------------------------------------------------- faults and schedulers

@pytest.fixture(scope="module")
def small(world, tmp_path_factory):
    """A clean reference build of a sub-area at z16: (region, Release)."""
    w, s, e, n = world.bbox
    region = box(w + 0.3 * (e - w), s + 0.3 * (n - s), w + 0.7 * (e - w), s + 0.7 * (n - s))
    root = tmp_path_factory.mktemp("small")
    world.files.clear_faults()
    world.files.reset_stats()
    build_release(root, resolve_request(zoom=16, region=region, release="small", catalog=world.stac_url),
                  RunOptions(scheduler="synchronous", **QUIET))
    small_requests = world.files.stats()["requests"]
    return region, Release(root, "small"), small_requests


def test_429_503_and_expired_tokens_retry_resign_and_match(world, small, tmp_path, monkeypatch):
    import scale_alibi.curate.reader as reader

    region, ref, ref_requests = small
    monkeypatch.setattr(reader, "BACKOFF_S", 0.02)  # same retries, shorter waits
    calls = defaultdict(int)

    def signer(href: str) -> str:
        calls[href] += 1
        return world.sign(href, ttl_s=-60 if calls[href] == 1 else 3600)  # the first token is expired

    world.files.require_signature(True)
    world.files.inject(status=429, count=3)
    world.files.inject(status=503, count=3)
    world.files.reset_stats()
    try:
        build_release(tmp_path, resolve_request(zoom=16, region=region, release="small", catalog=world.stac_url),
                      RunOptions(scheduler="synchronous", signer=signer, progress=False, echo=lambda m: None))
    finally:
        world.files.require_signature(False)
        world.files.clear_faults()
    assert calls and all(c >= 2 for c in calls.values())  # every href was re-signed after its 403
    # The 6 injected errors were answered, and retried. (The 403s are not added to the bound: the
    # reads after a re-sign need not repeat every request the reference build made.)
    assert world.files.stats()["requests"] >= ref_requests + 6
    assert file_tree(Release(tmp_path, "small").path) == file_tree(ref.path)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_existing_dask_scheduler_on_loopback(world, small, tmp_path):
    region, ref, ref_requests = small
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nworkers", "1",
                                       "--nthreads", "1", "--no-dashboard"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[2])))
        from dask.distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(addr, timeout="2s") as c:
                    if c.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dask scheduler/worker did not start"
            time.sleep(0.3)
        build_release(tmp_path, resolve_request(zoom=16, region=region, release="small", catalog=world.stac_url),
                      RunOptions(scheduler=addr, **QUIET))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert file_tree(Release(tmp_path, "small").path) == file_tree(ref.path)


# ---------------------------------------------------------------------------- user errors

def _run_cli(args: list[str]):
    from click.testing import CliRunner

    from scale_alibi.cli.main import main

    return CliRunner().invoke(main, ["build", *args])


def test_bad_input_gives_one_line_and_nonzero_exit(world, tmp_path):
    bad_json = tmp_path / "area.geojson"
    bad_json.write_text("{not json")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    w, s, e, n = world.bbox
    bbox = f"{w},{s},{e},{n}"
    cases = [
        ["--bbox", bbox, "--zoom", "15", "--catalog", "http://127.0.0.1:9", "--out", str(tmp_path / "o")],
        ["--region", str(bad_json), "--zoom", "15", "--catalog", world.stac_url, "--out", str(tmp_path / "o")],
        ["--bbox", bbox, "--zoom", "25", "--catalog", world.stac_url, "--out", str(tmp_path / "o")],
        ["--bbox", bbox, "--zoom", "15", "--catalog", world.stac_url, "--out", str(a_file / "sub")],
    ]
    for args in cases:
        result = _run_cli([*args, "--signer", "none", "--no-progress", "--scheduler", "synchronous"])
        lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and len(result.output.strip().splitlines()) <= 2, result.output


def test_a_second_build_of_one_release_is_refused(world, tmp_path):
    from scale_alibi.contract.errors import UserError
    from scale_alibi.curate.pipeline import ReleaseLock

    (tmp_path / "r").mkdir()
    with ReleaseLock(tmp_path / "r" / ".lock"):
        with pytest.raises(UserError, match="another build"):
            build_release(tmp_path, resolve_request(zoom=15, region=box(*world.bbox), release="r",
                                                    catalog=world.stac_url),
                          RunOptions(scheduler="synchronous", **QUIET))


def _build_with_a_failing_scene(world, small, tmp_path, monkeypatch) -> Release:
    """`small` built with one NAIP scene answering 503 forever: the build fails after retries,
    leaving the other metatiles committed. Returns the unfinished release."""
    import scale_alibi.curate.reader as reader
    from scale_alibi.contract.errors import UserError

    _, ref, _ = small
    monkeypatch.setattr(reader, "BACKOFF_S", 0.01)
    victim = ref.read_manifest().to_pylist()[0]["naip_items"][0]
    world.files.inject(status=503, count=10_000, path_contains=victim)
    try:
        with pytest.raises(UserError, match="failed after retries"):
            build_release(tmp_path, resolve_request(zoom=16, region=small[0], release="small", catalog=world.stac_url),
                          RunOptions(scheduler="synchronous", **QUIET))
    finally:
        world.files.clear_faults()
    return Release(tmp_path, "small")


def test_a_failing_scene_is_retried_reported_and_resumed(world, small, tmp_path, monkeypatch):
    region, ref, _ = small
    rel = _build_with_a_failing_scene(world, small, tmp_path, monkeypatch)
    assert not rel.is_finished
    build_release(tmp_path, resolve_request(zoom=16, region=region, release="small", catalog=world.stac_url),
                  RunOptions(scheduler="synchronous", **QUIET))
    assert file_tree(rel.path) == file_tree(ref.path)


def test_a_resume_recuts_done_metatiles_whose_committed_files_were_damaged(world, small, tmp_path, monkeypatch):
    from scale_alibi.contract.release import triplet_files

    region, ref, _ = small
    rel = _build_with_a_failing_scene(world, small, tmp_path, monkeypatch)
    committed = [f for row in ref.read_manifest().to_pylist() for f, _ in triplet_files(row) if (rel.path / f).exists()]
    assert len(committed) >= 2
    (rel.path / committed[0]).write_bytes((rel.path / committed[0]).read_bytes()[:50])  # truncated
    (rel.path / committed[-1]).unlink()  # lost (e.g. a rename that never reached the disk)
    build_release(tmp_path, resolve_request(zoom=16, region=region, release="small", catalog=world.stac_url),
                  RunOptions(scheduler="synchronous", **QUIET))
    assert file_tree(rel.path) == file_tree(ref.path)
