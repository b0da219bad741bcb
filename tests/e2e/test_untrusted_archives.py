"""Untrusted PMTiles archives end to end: `curate import-pmtiles` refuses a hostile archive or tile
with one line and writes nothing, `curate stats` checks tile headers before decoding, and `curate
serve` fails only the hostile archive's layer, fast, while the release's other layers keep serving.
Archives are the real writers' (`curate pack`, the reference `pmtiles` Writer), byte-patched."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import httpx
import pytest
from click.testing import CliRunner
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from scale_alibi.cli.main import main
from scale_alibi.contract.release import LAYERS, STATS_NAME, Release
from scale_alibi.serve.process import ServerProcess
from tests.archive_patch import gzip_bomb, png_announcing, with_entry, with_leaf, with_metadata, with_root_at_end
from tests.memory_cap import address_space_capped
from tests.object_store import new_bucket, s3_environment
from tests.release_factory import make_release

NAME = "r"
Z, X0, Y0 = 15, 5240, 12660


def curate(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, mentions: str) -> str:
    """The single `error:` line a failed command printed last, exit 2, no traceback; it mentions `mentions`."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and lines and lines[-1].startswith("error: "), (result.exit_code, result.stderr[-2000:])
    assert sum(ln.startswith("error: ") for ln in lines) == 1 and "Traceback" not in result.stderr
    assert mentions in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Release, Path]:
    """(a tree release, its `curate pack` copy's data root)."""
    root = tmp_path_factory.mktemp("untrusted")
    tree = make_release(root / "tree", NAME, nx=2, ny=2)
    result = curate("pack", "--data", root / "tree", "--release", NAME, "--out", root / "packed")
    assert result.exit_code == 0, result.stderr
    return tree, root / "packed"


def layer_args(archives: dict[str, Path]) -> list[str]:
    return [f"--{layer}={archives[layer]}" for layer in LAYERS]


def nothing_written(out: Path) -> bool:
    release = out / "imported"
    return not release.exists() or not any(p.suffix in (".pmtiles", ".parquet") for p in release.iterdir())


def copies(packed_root: Path, into: Path) -> dict[str, Path]:
    into.mkdir(parents=True, exist_ok=True)
    return {layer: Path(shutil.copy(packed_root / NAME / f"{layer}.pmtiles", into / f"{layer}.pmtiles")) for layer in LAYERS}


HOSTILE_ARCHIVES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "entry length 2^40": (lambda p: with_entry(p, 0, length=1 << 40), "outside the"),
    "entry length 2^62": (lambda p: with_entry(p, 0, length=1 << 62), "outside the"),
    "offset that wraps": (lambda p: with_entry(p, 0, offset=(1 << 64) - 1024), "beyond 2^63"),
    "gzip-bomb root": (lambda p: with_root_at_end(p, gzip_bomb(256 << 20)), "first 16384 bytes"),
    "256 MiB non-JSON metadata": (lambda p: with_metadata(p, 256 << 20), "bytes of metadata"),
}


@pytest.mark.parametrize("case", list(HOSTILE_ARCHIVES))
def test_import_of_a_hostile_archive_is_one_error_line_and_writes_nothing(packed, tmp_path, case):
    _, packed_root = packed
    archives = copies(packed_root, tmp_path / "in")
    patch, mentions = HOSTILE_ARCHIVES[case]
    patch(archives["s1"])
    with address_space_capped():
        result = curate("import-pmtiles", *layer_args(archives), "--out", tmp_path / "out", "--release", "imported")
    assert str(archives["s1"]) in one_error_line(result, mentions)
    assert nothing_written(tmp_path / "out")


def paper_archive(path: Path, tiles: dict[tuple[int, int, int], bytes]) -> Path:
    """An archive as the paper's authors wrote theirs: the reference `pmtiles` Writer."""
    with open(path, "wb") as f:
        w = Writer(f)
        for (z, x, y), data in sorted(tiles.items(), key=lambda kv: zxy_to_tileid(*kv[0])):
            w.write_tile(zxy_to_tileid(z, x, y), data)
        zs = [z for z, _, _ in tiles]
        w.finalize({"tile_type": TileType.PNG, "tile_compression": Compression.NONE, "min_zoom": min(zs),
                    "max_zoom": max(zs), "min_lon_e7": 0, "min_lat_e7": 0, "max_lon_e7": 1, "max_lat_e7": 1,
                    "center_zoom": min(zs), "center_lon_e7": 0, "center_lat_e7": 0}, {"attribution": "raster gen"})
    return path


def naip_tiles(tree: Release) -> dict[tuple[int, int, int], bytes]:
    return {(int(p.parent.parent.name), int(p.parent.name), int(p.stem)): p.read_bytes()
            for p in (tree.path / "naip").rglob("*.png")}


HOSTILE_TILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "30000x30000 px": (lambda png: png_announcing(png, 30000, 30000), "is 30000x30000 px, not 256x256"),
    "512 px": (lambda png: png_announcing(png, 512, 512), "is 512x512 px, not 256x256"),
    "gray+alpha": (lambda png: png_announcing(png, 256, 256, colour_type=4), "8-bit gray+alpha PNG"),
    "not a PNG": (lambda png: b"GIF89a" + png[6:], "is not a PNG"),
}


@pytest.mark.parametrize("case", list(HOSTILE_TILES))
def test_import_checks_every_tiles_header_and_names_the_tile(packed, tmp_path, case):
    tree, packed_root = packed
    archives = copies(packed_root, tmp_path / "in")
    tiles = naip_tiles(tree)
    child = (Z + 1, 2 * X0 + 1, 2 * Y0)  # a zoom Y+1 NAIP tile: 256 px too
    patch, mentions = HOSTILE_TILES[case]
    tiles[child] = patch(tiles[child])
    archives["naip"] = paper_archive(tmp_path / "in" / "hires.pmtile", tiles)
    result = curate("import-pmtiles", *layer_args(archives), "--out", tmp_path / "out", "--release", "imported")
    line = one_error_line(result, mentions)
    assert "--naip tile 16/10481/25320" in line
    assert nothing_written(tmp_path / "out")


@pytest.mark.parametrize("bad", ["a b", "a\nb", "x" * 150, "../up", ".hidden"])
def test_import_refuses_the_release_names_serve_and_verify_refuse(packed, tmp_path, bad):
    _, packed_root = packed
    archives = copies(packed_root, tmp_path / "in")
    result = curate("import-pmtiles", *layer_args(archives), "--out", tmp_path / "out", "--release", bad)
    one_error_line(result, "is not allowed; use 1-100 letters, digits")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_import_refuses_negative_split_levels_with_one_line(packed, tmp_path):
    _, packed_root = packed
    archives = copies(packed_root, tmp_path / "in")
    result = curate("import-pmtiles", *layer_args(archives), "--out", tmp_path / "out", "--release", "imported",
                    "--split-levels", "-5")
    one_error_line(result, "--split-levels")
    assert nothing_written(tmp_path / "out")


def test_stats_checks_tile_headers_before_decoding(tmp_path):
    """A 30000 x 30000 tile (2.7 GB decoded) is refused from its header, in bounded memory."""
    release = make_release(tmp_path, NAME, nx=2, ny=1)
    child = release.tile_path("naip", Z + 1, 2 * X0 + 1, 2 * Y0 + 1)
    child.write_bytes(png_announcing(child.read_bytes(), 30000, 30000))
    with address_space_capped():
        result = curate("stats", "--data", tmp_path, "--release", NAME, "--split", "all")
    line = one_error_line(result, "naip_hires_3 is 30000x30000 px, not 256x256")
    assert f"triplet {Z}/{X0}/{Y0}" in line
    assert not (release.path / STATS_NAME).exists()


SERVE_CASES: dict[str, Callable[[Path], Path]] = {
    "gzip-bomb root": lambda p: with_root_at_end(p, gzip_bomb(256 << 20)),
    "entry length 2^40": lambda p: with_entry(p, 0, length=1 << 40),
    "gzip-bomb leaf directory": lambda p: with_leaf(p, gzip_bomb(256 << 20)),
}


def only_s1_is_missing(url: str, tree: Release) -> None:
    """s1 tiles of the release at `url` are 404 quickly; its s2 and naip tiles are served byte-identical."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for x in (X0, X0 + 1):
            started = time.monotonic()
            s1 = client.get(f"/tiles/{NAME}/s1/{Z}/{x}/{Y0}.png")
            elapsed_s = time.monotonic() - started
            assert s1.status_code == 404 and elapsed_s < 5, (s1.status_code, elapsed_s)
            for layer, z, tx, ty in (("s2", Z, x, Y0), ("naip", Z, x, Y0), ("naip", Z + 1, 2 * x, 2 * Y0 + 1)):
                r = client.get(f"/tiles/{NAME}/{layer}/{z}/{tx}/{ty}.png")
                assert r.status_code == 200, (layer, r.status_code, r.text[:200])
                assert r.content == tree.tile_path(layer, z, tx, ty).read_bytes()


@pytest.mark.parametrize("case", list(SERVE_CASES))
def test_serve_fails_only_the_hostile_archives_layer_fast(packed, tmp_path, case):
    tree, packed_root = packed
    data = tmp_path / "data"
    shutil.copytree(packed_root / NAME, data / NAME)
    SERVE_CASES[case](data / NAME / "s1.pmtiles")
    with ServerProcess(data) as server:
        only_s1_is_missing(server.url, tree)


@pytest.mark.parametrize("case", ["gzip-bomb root", "gzip-bomb leaf directory"])
def test_serve_from_a_bucket_fails_only_the_hostile_archives_layer_fast(packed, s3_endpoint, tmp_path, case):
    tree, packed_root = packed
    data = tmp_path / "data"
    shutil.copytree(packed_root / NAME, data / NAME)
    SERVE_CASES[case](data / NAME / "s1.pmtiles")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_environment(s3_endpoint).items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        url = f"s3://{new_bucket(s3_endpoint)}/releases"
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
        fs.pipe({f"{root.rstrip('/')}/{NAME}/{p.name}": p.read_bytes() for p in (data / NAME).iterdir()})
        with ServerProcess(url) as server:
            only_s1_is_missing(server.url, tree)
