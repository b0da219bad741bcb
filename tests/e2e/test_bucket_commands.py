"""Every command that reads a release reads one in a bucket (`s3://...`, moto on loopback) through the
contract's reader: `curate stats`, `pack`, `verify`, and the eval world task read what is on disk,
checked against the files themselves (PIL decodes, sha256 of the bytes)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scale_alibi.cli.main import main
from scale_alibi.contract.archive import Archive
from scale_alibi.contract.reader import StoredRelease
from scale_alibi.contract.release import LAYERS, Release, triplet_tiles
from scale_alibi.contract.storage import remote_filesystem
from tests.release_factory import make_release


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def in_bucket(s3_bucket, tmp_path) -> tuple[str, Release]:
    """(data root URL in the bucket, the same release on disk): a release uploaded object by object."""
    local = make_release(tmp_path / "data", "r", nx=3, ny=2)
    fs, root = remote_filesystem(f"{s3_bucket}/releases")
    for p in sorted(local.path.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{root}/r/{p.relative_to(local.path).as_posix()}", p.read_bytes())
    return f"{s3_bucket}/releases", local


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def test_stats_measures_a_release_in_a_bucket(in_bucket):
    url, local = in_bucket
    result = _invoke("stats", "--data", url, "--release", "r", "--split", "all")
    assert result.exit_code == 0, result.output
    fs, root = remote_filesystem(url)
    stats = json.loads(fs.cat_file(f"{root}/r/stats.json"))
    rows = local.read_manifest().to_pylist()
    assert stats["triplets"] == len(rows) == 6
    # Oracle: the S2 and NAIP tiles on disk, decoded by PIL, pooled over every pixel.
    for layer in ("s2", "naip"):
        pixels = np.concatenate([_rgb(local.tile_path(layer, r["z"], r["x"], r["y"]).read_bytes()).reshape(-1, 3)
                                 for r in rows])
        np.testing.assert_allclose(stats["modalities"][layer]["mean"], pixels.mean(0), atol=1e-3)
        np.testing.assert_allclose(stats["modalities"][layer]["std"], pixels.std(0), atol=1e-3)


def test_pack_reads_a_release_in_a_bucket_and_writes_its_archives_there(in_bucket, tmp_path):
    url, local = in_bucket
    result = _invoke("pack", "--data", url, "--release", "r", "--out", url.replace("/releases", "/packed"))
    assert result.exit_code == 0, result.output
    fs, root = remote_filesystem(url.replace("/releases", "/packed"))
    assert fs.cat_file(f"{root}/r/manifest.parquet") == local.manifest_path.read_bytes()
    assert not fs.exists(f"{root}/r/s1")  # archives only: no tree
    rows = local.read_manifest().to_pylist()
    for layer in LAYERS:
        (tmp_path / f"{layer}.pmtiles").write_bytes(fs.cat_file(f"{root}/r/{layer}.pmtiles"))
    archives = {layer: Archive.open(tmp_path / f"{layer}.pmtiles") for layer in LAYERS}
    # ... and the reader reads the packed release from the bucket by range, as the files on disk.
    packed = StoredRelease(url.replace("/releases", "/packed"), "r")
    assert packed.reads_archives
    read = packed.tiles()
    for r in rows:
        for _, tile in triplet_tiles(r["z"], r["x"], r["y"]):
            on_disk = local.tile_path(*tile).read_bytes()
            assert archives[tile[0]].read(*tile[1:]) == on_disk
            assert read(*tile) == on_disk


def test_verify_checks_a_release_in_a_bucket_and_names_a_missing_file(in_bucket):
    url, local = in_bucket
    result = _invoke("verify", "--data", url, "--release", "r", "--no-progress")
    assert result.exit_code == 0 and "all 42 files of 6 triplets match" in result.output, result.output
    fs, root = remote_filesystem(url)
    row = local.read_manifest().to_pylist()[4]
    fs.rm_file(f"{root}/r/s2/{row['z']}/{row['x']}/{row['y']}.png")
    result = _invoke("verify", "--data", url, "--release", "r", "--no-progress")
    assert result.exit_code == 1 and f"damaged: s2/{row['z']}/{row['x']}/{row['y']}.png" in result.output, result.output


def test_the_eval_world_task_reads_a_release_in_a_bucket_as_on_disk(in_bucket):
    from scale_alibi.model.eval.world_task import load_world_task

    url, local = in_bucket
    task = load_world_task(StoredRelease(url, "r"), ("a", "b"), lambda z, x, y: (x + y) % 2, progress=False)
    rows = local.read_manifest().to_pylist()
    heldout = [r for r in rows if r["split"] == "heldout"]
    test = task.splits["test"]
    assert len(test) == len(heldout) >= 1
    for i, r in enumerate(heldout):
        assert (test.images["s2"][i] == _rgb(local.tile_path("s2", r["z"], r["x"], r["y"]).read_bytes())
                .transpose(2, 0, 1)).all()
        children = [_rgb(local.tile_path(*t).read_bytes()) for _, t in triplet_tiles(r["z"], r["x"], r["y"])[3:]]
        hires = np.concatenate([np.concatenate(children[:2], axis=1), np.concatenate(children[2:], axis=1)], axis=0)
        assert (test.images["naip_hires"][i] == hires.transpose(2, 0, 1)).all()
        assert test.labels[i] == (r["x"] + r["y"]) % 2
