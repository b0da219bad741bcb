"""PMTiles: `curate pack` -> `curate serve` byte-identical to the tree, `curate import-pmtiles` round
trips and the paper's layout, and one-line errors for bad archives. Real servers over sockets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from pmtiles.reader import MmapSource, Reader
from pmtiles.tile import Compression, TileType, tileid_to_zxy, zxy_to_tileid
from pmtiles.writer import Writer

from scale_alibi.cli.main import main
from scale_alibi.contract.archive import Archive, ArchiveWriter, decode_varints, encode_varints, tile_ids
from scale_alibi.contract.release import (
    HIRES_CHILDREN,
    LAYERS,
    REQUIRED_COLUMNS,
    Release,
    manifest_metadata,
    write_manifest,
)
from scale_alibi.curate.pipeline import split_of
from scale_alibi.serve.process import ServerProcess
from tests.release_factory import make_release

NAME = "small"
_EXTRA = {"s2_datetime"}  # the factory's column beyond REQUIRED_COLUMNS: unknown to an import (documented)


def curate(*args: str):
    """`curate ARGS` in-process through the real click group; the result has exit_code, stdout, stderr."""
    return CliRunner().invoke(main, [str(a) for a in args])


def every_tile(release: Release) -> list[tuple[str, int, int, int]]:
    """Every tile the manifest of `release` lists: (layer, z, x, y)."""
    tiles = []
    for r in release.read_manifest().select(["z", "x", "y"]).to_pylist():
        z, x, y = r["z"], r["x"], r["y"]
        tiles += [(layer, z, x, y) for layer in LAYERS]
        tiles += [("naip", z + 1, 2 * x + dx, 2 * y + dy) for dx, dy in HIRES_CHILDREN]
    return tiles


def with_build_splits(release: Release, fraction: float, levels: int) -> None:
    """Rewrite the factory manifest's splits as `curate build` (and the import) computes them."""
    table = release.read_manifest()
    split = [split_of(r["z"], r["x"], r["y"], fraction, levels) for r in table.select(["z", "x", "y"]).to_pylist()]
    table = table.set_column(table.column_names.index("split"), "split", pa.array(split))
    write_manifest(table, release.manifest_path, {"release": release.name, "zoom": 15})


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(tree data root, packed data root): a factory release and `curate pack --out` of it."""
    root = tmp_path_factory.mktemp("pmtiles")
    tree, packed = root / "tree", root / "packed"
    release = make_release(tree, NAME, nx=4, ny=3)
    with_build_splits(release, 0.5, 0)
    (release.path / "stats.json").write_text('{"release": "small"}')
    result = curate("pack", "--data", tree, "--release", NAME, "--out", packed)
    assert result.exit_code == 0, result.stderr
    return tree, packed


@pytest.fixture(scope="module")
def servers(packed):
    """Clients of a server of the tree and of one of the packed copy (no tile tree), each in its own process."""
    tree, pk = packed
    with ServerProcess(tree) as a, ServerProcess(pk) as b:
        with httpx.Client(base_url=a.url, timeout=30) as ca, httpx.Client(base_url=b.url, timeout=30) as cb:
            yield ca, cb


def both(servers, path: str, headers: dict | None = None) -> tuple[httpx.Response, httpx.Response]:
    return tuple(client.get(path, headers=headers or {}) for client in servers)


# ---------------------------------------------------------------------------------- the format

def test_tile_ids_and_directories_agree_with_the_reference_implementation(tmp_path):
    rng = np.random.default_rng(1)
    for z in (0, 1, 7, 15, 22):
        x, y = rng.integers(0, 2**z, 64), rng.integers(0, 2**z, 64)
        assert tile_ids(z, x, y).tolist() == [zxy_to_tileid(z, int(a), int(b)) for a, b in zip(x, y)]
    values = np.array([0, 1, 127, 128, 2**35, 2**64 - 1], dtype=np.uint64)
    assert decode_varints(encode_varints(values)).tolist() == values.tolist()
    # Enough scattered tiles that the directory needs leaves: the reference reader must find each one.
    ids = np.unique(rng.integers(0, 4**20, 120_000).astype(np.uint64) + np.uint64((4**20 - 1) // 3))
    path = tmp_path / "big.pmtiles"
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        for t in ids.tolist():
            w.add(t, b"tile %d" % t)
        w.finish({"min_zoom": 20, "max_zoom": 20, "min_lon_e7": 0, "min_lat_e7": 0, "max_lon_e7": 1, "max_lat_e7": 1,
                  "center_zoom": 20, "center_lon_e7": 0, "center_lat_e7": 0}, {"name": "big"})
    with open(path, "rb") as f:
        ref = Reader(MmapSource(f))
        assert ref.header()["leaf_directory_length"] > 0
        for t in ids[::997].tolist():
            assert ref.get(*tileid_to_zxy(t)) == b"tile %d" % t
    with Archive.open(path) as archive:
        assert archive.entries()[0].tolist() == ids.tolist()


# ---------------------------------------------------------------------------------- pack -> serve

def test_pack_writes_three_png_archives_with_release_metadata_and_no_tree(packed):
    tree, pk = packed
    assert sorted(os.listdir(pk / NAME)) == ["manifest.parquet", "naip.pmtiles", "s1.pmtiles", "s2.pmtiles", "stats.json"]
    assert (pk / NAME / "manifest.parquet").read_bytes() == (tree / NAME / "manifest.parquet").read_bytes()
    for layer, zooms in (("s1", (15, 15)), ("s2", (15, 15)), ("naip", (15, 16))):
        with open(pk / NAME / f"{layer}.pmtiles", "rb") as f:
            ref = Reader(MmapSource(f))
            h, meta = ref.header(), ref.metadata()
        assert h["tile_type"] == TileType.PNG and (h["min_zoom"], h["max_zoom"]) == zooms
        assert h["addressed_tiles_count"] == 12 * (5 if layer == "naip" else 1)
        info = meta["scale_alibi"]
        assert (info["release"], info["layer"], info["zoom"], info["manifest_schema_version"]) == (NAME, layer, 15, 1)
        assert meta["attribution"].startswith("NAIP" if layer == "naip" else "Contains modified Copernicus")
        w, s, e, n = (v / 1e7 for v in (h["min_lon_e7"], h["min_lat_e7"], h["max_lon_e7"], h["max_lat_e7"]))
        assert -122.44 < w < e < -122.37 and 37.78 < s < n < 37.83


def test_packed_release_serves_every_tile_byte_identical_with_equal_etags(packed, servers):
    tree, _ = packed
    release = Release(tree, NAME)
    for layer, z, x, y in every_tile(release):
        a, b = both(servers, f"/tiles/{NAME}/{layer}/{z}/{x}/{y}.png")
        assert a.status_code == b.status_code == 200
        assert b.content == a.content == release.tile_path(layer, z, x, y).read_bytes()
        for h in ("etag", "content-type", "content-length", "cache-control", "accept-ranges"):
            assert a.headers[h] == b.headers[h]
    layer, z, x, y = every_tile(release)[9]
    url = f"/tiles/{NAME}/{layer}/{z}/{x}/{y}.png"
    a, b = both(servers, url, {"range": "bytes=100-999"})
    assert a.status_code == b.status_code == 206 and a.content == b.content and len(b.content) == 900
    a, b = both(servers, url, {"if-none-match": a.headers["etag"]})
    assert a.status_code == b.status_code == 304
    a, b = both(servers, f"/tiles/{NAME}/s1/15/{2**15 - 1}/0.png")  # not in the release
    assert a.status_code == b.status_code == 404


def test_packed_release_serves_identical_triplets_shards_and_documents(packed, servers):
    tree, _ = packed
    rows = Release(tree, NAME).read_manifest().select(["z", "x", "y"]).to_pylist()
    for r in rows:
        a, b = both(servers, f"/triplets/{NAME}/{r['z']}/{r['x']}/{r['y']}")
        assert a.status_code == b.status_code == 200 and a.content == b.content and a.headers["etag"] == b.headers["etag"]
    for query in ("shard_size=5&split=all", "shard_size=3&seed=7&epoch=2&split=train", "shard_size=4&split=heldout&start=1"):
        a, b = both(servers, f"/releases/{NAME}/shards?{query}")
        assert a.json() == b.json() and a.json()["num_shards"] >= 1
        for i in range(a.json()["num_shards"]):
            a, b = both(servers, f"/shards/{NAME}/{i}.tar?{query}")
            assert a.status_code == b.status_code == 200
            assert a.content == b.content and a.headers["etag"] == b.headers["etag"] and len(a.content) > 7 * 512
    for path in (f"/releases/{NAME}", f"/releases/{NAME}/stats.json", f"/tiles/{NAME}/naip/tilejson.json"):
        a, b = both(servers, path)
        assert a.status_code == b.status_code == 200
        # TileJSON names its own server in `tiles`: the two differ by port only.
        assert a.text.replace(str(servers[0].base_url), "URL") == b.text.replace(str(servers[1].base_url), "URL")


def test_stats_of_a_packed_release_equal_those_of_its_tree(packed):
    tree, pk = packed
    for data in (tree, pk):
        result = curate("stats", "--data", data, "--release", NAME, "--split", "all")
        assert result.exit_code == 0, result.stderr
    assert (pk / NAME / "stats.json").read_bytes() == (tree / NAME / "stats.json").read_bytes()
    assert not any((pk / NAME / layer).exists() for layer in LAYERS)


def test_pack_beside_the_manifest_keeps_the_tree_and_is_atomic(tmp_path):
    release = make_release(tmp_path, NAME, nx=2, ny=2)
    result = curate("pack", "--data", tmp_path, "--release", NAME)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [str(release.path / f"{layer}.pmtiles") for layer in LAYERS]
    assert all((release.path / layer).is_dir() for layer in LAYERS)
    assert not [p for p in os.listdir(release.path) if p.endswith(".tmp")]


# ---------------------------------------------------------------------------------- import

def test_import_of_a_packed_release_round_trips_its_manifest_and_bytes(packed, servers, tmp_path):
    tree, pk = packed
    original = Release(tree, NAME)
    args = [f"--{layer}={pk / NAME / f'{layer}.pmtiles'}" for layer in LAYERS]
    for name, extra in (("imported", []), ("unpacked", ["--unpack"])):
        result = curate("import-pmtiles", *args, "--out", tmp_path, "--release", name, "--heldout-fraction", "0.5",
                        "--split-levels", "0", *extra)
        assert result.exit_code == 0, result.stderr
    want = original.read_manifest()
    assert {"train", "heldout"} <= set(want.column("split").to_pylist())
    want = want.drop_columns(sorted(_EXTRA)).to_pylist()
    for name in ("imported", "unpacked"):
        got = Release(tmp_path, name).read_manifest()
        assert got.schema.names == list(REQUIRED_COLUMNS) and got.to_pylist() == want
    assert not any((tmp_path / "imported" / layer).exists() for layer in LAYERS)
    for layer, z, x, y in every_tile(original):
        assert Release(tmp_path, "unpacked").tile_path(layer, z, x, y).read_bytes() == original.tile_path(layer, z, x, y).read_bytes()
    with ServerProcess(tmp_path) as server, httpx.Client(base_url=server.url, timeout=30) as imported:
        for layer, z, x, y in every_tile(original):
            a = servers[0].get(f"/tiles/{NAME}/{layer}/{z}/{x}/{y}.png")
            for name in ("imported", "unpacked"):
                b = imported.get(f"/tiles/{name}/{layer}/{z}/{x}/{y}.png")
                assert b.status_code == 200 and b.content == a.content and b.headers["etag"] == a.headers["etag"]
        shards = imported.get("/releases/imported/shards?shard_size=4&split=all").json()
        assert shards["triplets"] == 12 and shards["num_shards"] == 3


def _paper_archive(path: Path, tiles: dict[tuple[int, int, int], bytes], tile_type=TileType.PNG) -> Path:
    """An archive as the paper's authors wrote theirs: the reference `pmtiles` Writer (it de-duplicates)."""
    with open(path, "wb") as f:
        w = Writer(f)
        for (z, x, y), data in sorted(tiles.items(), key=lambda kv: zxy_to_tileid(*kv[0])):
            w.write_tile(zxy_to_tileid(z, x, y), data)
        zs = [z for z, _, _ in tiles]
        w.finalize({"tile_type": tile_type, "tile_compression": Compression.NONE, "min_zoom": min(zs),
                    "max_zoom": max(zs), "min_lon_e7": 0, "min_lat_e7": 0, "max_lon_e7": 1, "max_lat_e7": 1,
                    "center_zoom": min(zs), "center_lon_e7": 0, "center_lat_e7": 0}, {"attribution": "raster gen"})
    return path


@pytest.fixture(scope="module")
def paper_layout(tmp_path_factory):
    """sar / visual / hires archives of a factory release's tiles, with tiles that make no triplet."""
    root = tmp_path_factory.mktemp("paper")
    release = make_release(root / "src", NAME, nx=3, ny=2)
    files = {layer: {} for layer in LAYERS}
    for layer, z, x, y in every_tile(release):
        files[layer][(z, x, y)] = release.tile_path(layer, z, x, y).read_bytes()
    rows = release.read_manifest().select(["z", "x", "y"]).to_pylist()
    gone = rows[0]  # one NAIP child missing: no triplet there
    del files["naip"][(16, 2 * gone["x"] + 1, 2 * gone["y"])]
    alone = rows[1]  # no S2 tile: no triplet there either
    del files["s2"][(15, alone["x"], alone["y"])]
    files["s1"][(15, 100, 100)] = files["s1"][(15, rows[2]["x"], rows[2]["y"])]  # S1 only, and a duplicate
    names = {"s1": "sar.pmtile", "s2": "visual.pmtile", "naip": "hires.pmtile"}
    paths = {layer: _paper_archive(root / names[layer], files[layer]) for layer in LAYERS}
    return release, paths, [(r["x"], r["y"]) for r in rows[2:]]


def test_import_of_the_papers_layout_keeps_exactly_the_complete_triplets(paper_layout, tmp_path):
    source, paths, complete = paper_layout
    result = curate("import-pmtiles", "--s1", paths["s1"], "--s2", paths["s2"], "--naip", paths["naip"],
                    "--out", tmp_path, "--release", "paper")
    assert result.exit_code == 0, result.stderr
    imported = Release(tmp_path, "paper")
    table = imported.read_manifest()
    assert [(r["x"], r["y"]) for r in table.to_pylist()] == sorted(complete)
    want = {(r["x"], r["y"]): r for r in source.read_manifest().to_pylist()}
    for r in table.to_pylist():
        assert r["split"] == split_of(15, r["x"], r["y"], 0.25, 2)
        assert {k: r[k] for k in r if k.startswith("hash")} == {k: want[(r["x"], r["y"])][k] for k in r if k.startswith("hash")}
    meta = manifest_metadata(table)
    assert meta["zoom"] == 15 and meta["imported_from"]["s1"]["file"] == "sar.pmtile"


# ---------------------------------------------------------------------------------- bad input

def _error_line(result) -> str:
    """The one `error:` line a failed command printed last (progress lines may precede it), exit status 2."""
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0], (result.exit_code, lines)
    return errors[0]


def test_bad_archives_and_missing_layers_exit_2_with_one_line_and_write_nothing(paper_layout, tmp_path):
    _, paths, _ = paper_layout
    text = tmp_path / "notes.pmtiles"
    text.write_text("not an archive\n" * 20)
    jpeg = _paper_archive(tmp_path / "jpeg.pmtiles", {(15, 1, 1): b"\xff\xd8\xff jpeg"}, TileType.JPEG)
    truncated = tmp_path / "short.pmtiles"
    truncated.write_bytes(paths["s2"].read_bytes()[:2000])
    good = {layer: str(p) for layer, p in paths.items()}
    cases = {
        "not a PMTiles archive": {**good, "s2": str(text)},
        "JPEG tiles": {**good, "naip": str(jpeg)},
        "truncated": {**good, "s2": str(truncated)},
        "--naip is missing": {k: v for k, v in good.items() if k != "naip"},
        "cannot be read": {**good, "s1": str(tmp_path / "nowhere.pmtiles")},
        "--zoom 9": {**good, "zoom": "9"},
    }
    out = tmp_path / "out"
    for expect, opts in cases.items():
        result = curate("import-pmtiles", *[f"--{k}={v}" for k, v in opts.items()], "--out", out, "--release", "r")
        assert expect in _error_line(result)
        assert not Release(out, "r").is_finished
    assert not (out / "r").exists() or not any(p.suffix == ".pmtiles" for p in (out / "r").iterdir())
    (out / "leftover" / "s1").mkdir(parents=True)  # a tree an earlier --unpack left: it would hide the archives
    args = [f"--{k}={v}" for k, v in good.items()]
    assert "holds a tile tree" in _error_line(curate("import-pmtiles", *args, "--out", out, "--release", "leftover"))
    assert "no finished release" in _error_line(curate("pack", "--data", tmp_path, "--release", "nope"))


def test_pack_refuses_a_tile_that_does_not_match_the_manifest(tmp_path):
    release = make_release(tmp_path / "data", NAME, nx=2, ny=1)
    path = release.tile_path("naip", 16, 2 * 5240 + 1, 2 * 12660 + 1)
    path.write_bytes(path.read_bytes()[:-10])
    line = _error_line(curate("pack", "--data", tmp_path / "data", "--release", NAME, "--out", tmp_path / "out"))
    assert "does not match the manifest" in line
    assert not (tmp_path / "out" / NAME / "manifest.parquet").exists()
    assert not list((tmp_path / "out" / NAME).glob("*.tmp")) and not (tmp_path / "out" / NAME / "naip.pmtiles").exists()


def test_a_release_with_archives_that_link_outside_the_data_directory_serves_no_tiles(packed, tmp_path):
    _, pk = packed
    data = tmp_path / "data"
    (data / "evil").mkdir(parents=True)
    shutil.copy2(pk / NAME / "manifest.parquet", data / "evil" / "manifest.parquet")
    for layer in LAYERS:
        os.symlink(pk / NAME / f"{layer}.pmtiles", data / "evil" / f"{layer}.pmtiles")
    with ServerProcess(data) as server:
        rows = Release(pk, NAME).read_manifest().select(["z", "x", "y"]).to_pylist()
        r = httpx.get(f"{server.url}/tiles/evil/s1/{rows[0]['z']}/{rows[0]['x']}/{rows[0]['y']}.png")
        assert r.status_code == 404
