"""curate build on a real Dask cluster (`dask scheduler` + `dask worker` processes on loopback):
a worker SIGKILLed mid-build changes no byte of the release, and workers stay under their memory limit."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import mercantile
import pyarrow.parquet as pq
import pytest
from dask.utils import parse_bytes
from shapely.geometry import box

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import Release
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
from tests.dask_cluster import dask_cluster, process_tree
from tests.release_factory import file_tree

QUIET = {"signer": "none", "progress": False, "echo": lambda m: None}
# docs/scaling.md's recommendation for `dask worker --memory-limit` (the nanny restarts a worker past 95% of it).
WORKER_MEMORY_LIMIT = "2GiB"
BUILD = {"zoom": 16, "release": "mid", "metatile_levels": 1}  # 2x2-tile metatiles: several tasks per worker



@pytest.fixture(scope="module")
def region_and_local(world, tmp_path_factory):
    """The middle 60% of the world and its local (one process, no Dask) build: the reference."""
    w, s, e, n = world.bbox
    region = box(w + 0.2 * (e - w), s + 0.2 * (n - s), w + 0.8 * (e - w), s + 0.8 * (n - s))
    root = tmp_path_factory.mktemp("local")
    build_release(root, resolve_request(region=region, catalog=world.stac_url, **BUILD),
                  RunOptions(scheduler="synchronous", **QUIET))
    return region, Release(root, BUILD["release"])


def _executing_metatile(client) -> tuple[str, str] | None:
    """(worker address, metatile task key) of a metatile task a worker is running, if any."""
    for addr, keys in client.processing().items():
        for key in keys:
            if str(key).startswith("metatile-"):
                return addr, str(key)
    return None


def test_a_worker_killed_mid_build_changes_no_byte_of_the_release(world, region_and_local, tmp_path):
    from dask.distributed import Client

    region, local = region_and_local
    out = tmp_path / "out"
    done_dir = out / BUILD["release"] / ".build" / "done"
    errors: list[BaseException] = []
    results = []

    def build(address: str) -> None:
        try:
            results.append(build_release(out, resolve_request(region=region, catalog=world.stac_url, **BUILD),
                                         RunOptions(scheduler=address, **QUIET)))
        except BaseException as e:  # re-raised in the test's thread below
            errors.append(e)

    peak_rss = 0
    with dask_cluster(workers=2, memory_limit=WORKER_MEMORY_LIMIT, local_dir=tmp_path / "dask") as cluster:
        with Client(cluster.address, timeout="10s") as client:
            pids = client.run(os.getpid)  # worker address -> worker process id
            driver = threading.Thread(target=build, args=(cluster.address,))
            driver.start()
            killed = None
            deadline = time.monotonic() + 120
            while driver.is_alive() and time.monotonic() < deadline:
                for proc in cluster.workers:
                    peak_rss = max([peak_rss, *(p.memory_info().rss for p in process_tree(proc.pid)[1:])])
                running = _executing_metatile(client) if killed is None else None
                if running and done_dir.exists() and any(done_dir.iterdir()):
                    addr, key = running
                    killed = (key, len(list(done_dir.iterdir())))
                    cluster.kill(cluster.command_of(pids[addr]))
                    cluster.start_worker()  # a fresh process joins: tasks land on it with nothing inherited
                time.sleep(0.05)
            driver.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not driver.is_alive(), "the build did not finish in 120 s"
    assert not errors, errors
    assert killed is not None, "the build finished before a worker could be killed mid-task"
    assert killed[1] < results[0].metatiles, f"killed after {killed[1]} metatiles were done: not mid-build"

    built = Release(out, BUILD["release"])
    assert pq.read_table(built.manifest_path).to_pylist() == pq.read_table(local.manifest_path).to_pylist()
    assert file_tree(built.path) == file_tree(local.path)  # every file's bytes; no staging, lock or partial file left
    limit = parse_bytes(WORKER_MEMORY_LIMIT)
    assert peak_rss < 0.8 * limit, f"a worker peaked at {peak_rss / 2**20:.0f} MiB, near its {WORKER_MEMORY_LIMIT} limit"


class _Lost(OSError):
    """A worker lost at a chosen point of a metatile task (raised where a SIGKILL would land).

    An OSError, one of the faults the build records and resumes from (on a cluster a dead worker
    reaches the driver as KilledWorker, also one of them); a programming error would propagate."""


def test_a_retry_lost_after_its_first_attempt_committed_half_leaves_no_hole(world, region_and_local, tmp_path,
                                                                           monkeypatch):
    """Attempt 1 of a metatile writes its done record and dies half-way through its renames; Dask's
    retry (attempt 2) dies too, before staging anything; the rerun must still give every file."""
    import scale_alibi.curate.encode as encode
    import scale_alibi.curate.pipeline as build
    import scale_alibi.curate.pipeline.local_output as output  # where a local output looks up commit_staging
    from scale_alibi.curate.search import SearchOptions, search_items

    region, local = region_and_local
    commit = build.commit_staging
    lost: dict = {}

    def commit_half_then_die(release_dir: Path, metatile, record: dict) -> None:
        if lost:
            return commit(release_dir, metatile, record)
        lost.update(metatile=metatile, rows=record["rows"])
        commit(release_dir, metatile, {**record, "files": record["files"][: len(record["files"]) // 2]})
        raise _Lost("worker lost while renaming")

    monkeypatch.setattr(output, "commit_staging", commit_half_then_die)
    with pytest.raises(UserError, match="1 of"):
        build_release(tmp_path, resolve_request(region=region, catalog=world.stac_url, **BUILD),
                      RunOptions(scheduler="synchronous", **QUIET))
    monkeypatch.setattr(output, "commit_staging", commit)

    # Attempt 2, on another worker: the same task, lost before it stages its first PNG.
    def lost_before_encoding(*args, **kwargs):
        raise _Lost("worker lost while encoding")

    monkeypatch.setattr(encode, "encode_hwc", lost_before_encoding)
    tiles = [(mercantile.Tile(r["x"], r["y"], r["z"]), r["split"]) for r in lost["rows"]]
    bbox = build.lonlat_bounds(t for t, _ in tiles)
    items = [search_items(world.stac_url, layer, bbox, SearchOptions()) for layer in ("s2", "s1", "naip")]
    job = build.MetatileJob(output.LocalOutput(tmp_path, BUILD["release"]), lost["metatile"], tiles, 0.99, 730.0,
                            signer="none", catalog=world.stac_url)
    with pytest.raises(_Lost):
        build.cut_metatile(job, *items)
    monkeypatch.undo()

    build_release(tmp_path, resolve_request(region=region, catalog=world.stac_url, **BUILD),
                  RunOptions(scheduler="synchronous", **QUIET))
    built = Release(tmp_path, BUILD["release"])
    assert file_tree(built.path) == file_tree(local.path)


def test_a_late_duplicate_of_a_metatile_task_writes_nothing_into_a_sealed_release(world, region_and_local):
    """A task Dask runs again after the driver moved on (a recomputed result, a worker presumed lost)
    finds the manifest and leaves the finished release untouched: no done record, no staging."""
    import scale_alibi.curate.pipeline as build
    from scale_alibi.curate.pipeline.local_output import LocalOutput
    from scale_alibi.curate.pipeline.metatile import ReleaseSealed
    from scale_alibi.curate.search import SearchOptions, search_items

    _, local = region_and_local
    before = file_tree(local.path)
    row = local.read_manifest().to_pylist()[0]
    mt = build.metatile_of(mercantile.Tile(row["x"], row["y"], row["z"]), BUILD["metatile_levels"])
    tiles = [(t, r["split"]) for r in local.read_manifest().to_pylist()
             if build.metatile_of(t := mercantile.Tile(r["x"], r["y"], r["z"]), BUILD["metatile_levels"]) == mt]
    bbox = build.lonlat_bounds(t for t, _ in tiles)
    items = [search_items(world.stac_url, layer, bbox, SearchOptions()) for layer in ("s2", "s1", "naip")]
    job = build.MetatileJob(LocalOutput(local.root, local.name), mt, tiles, 0.99, 730.0,
                            signer="none", catalog=world.stac_url)
    with pytest.raises(ReleaseSealed):
        build.cut_metatile(job, *items)
    assert file_tree(local.path) == before
