"""Hostile and malformed command-line input: one `error:` line, exit status 2, nothing written or
deleted outside --out. Fast: no world, no network (input is refused before any catalog call)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import STATS_NAME, Release
from tests.cli_errors import one_error_line as _one_error_line
from tests.release_factory import make_release

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a build that got past validation would say so


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _build(out: Path, *args: str):
    return _invoke("build", "--catalog", UNREACHABLE, "--signer", "none", "--no-progress",
                   "--scheduler", "synchronous", "--out", str(out), *args)


def _victim(directory: Path) -> list[Path]:
    """What a build would delete in a release directory: a .build tree and a temp file."""
    (directory / ".build" / "done").mkdir(parents=True, exist_ok=True)
    files = [directory / ".build" / "done" / "0-0-0.json", directory / ".x.tmp"]
    for f in files:
        f.write_text("precious")
    return files


@pytest.mark.parametrize("name", ["../victim", "ABSOLUTE", "..", "r" * 300, "a\nb", ".hidden", "a/b"])
def test_a_release_name_that_is_not_a_plain_name_is_refused_and_nothing_outside_out_is_touched(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    precious = _victim(victim) + _victim(tmp_path)  # `..` would be tmp_path itself
    name = str(victim) if name == "ABSOLUTE" else name
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = _build(tmp_path / "data", "--bbox", "0,0,0.01,0.01", "--zoom", "15", "--release", name)
    _one_error_line(result, "release name")
    assert all(p.read_text() == "precious" for p in precious)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # not even --out was created


def test_a_release_directory_linked_out_of_out_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    precious = _victim(victim)
    (tmp_path / "data").mkdir()
    os.symlink(victim, tmp_path / "data" / "linked")
    result = _build(tmp_path / "data", "--bbox", "0,0,0.01,0.01", "--zoom", "15", "--release", "linked")
    _one_error_line(result, "resolves outside")
    assert all(p.read_text() == "precious" for p in precious)
    assert sorted(p.name for p in victim.iterdir()) == [".build", ".x.tmp"]


def test_stats_and_train_refuse_a_release_name_that_is_a_path(tmp_path):
    make_release(tmp_path / "elsewhere", "r", nx=1, ny=1)
    (tmp_path / "data").mkdir()
    result = _invoke("stats", "--data", str(tmp_path / "data"), "--release", "../elsewhere/r")
    _one_error_line(result, "release name")
    assert not (tmp_path / "elsewhere" / "r" / STATS_NAME).exists()
    result = _invoke("train", "--server", UNREACHABLE, "--release", "../r", "--out", str(tmp_path / "run"))
    _one_error_line(result, "release name")


def test_the_server_does_not_serve_a_release_whose_directory_name_is_not_a_release_name(tmp_path):
    from scale_alibi.serve.catalog import Catalog
    from scale_alibi.serve.stores import DirectoryStore

    make_release(tmp_path, "good", nx=1, ny=1)
    make_release(tmp_path, "bad name", nx=1, ny=1)
    catalog = Catalog(DirectoryStore(tmp_path))
    assert catalog.names() == ["good"] and catalog.get("bad name") is None


def _geojson(tmp_path: Path, latitude: float) -> str:
    """A square whose second vertex has `latitude` (json writes NaN and Infinity as those tokens)."""
    path = tmp_path / f"area-{latitude}.geojson"
    ring = [[0, 0], [0.01, latitude], [0.01, 0.01], [0, 0.01], [0, 0]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return str(path)


@pytest.mark.parametrize("args, mentions", [
    (["--bbox", "0,0,inf,0.01"], "--bbox"),
    (["--bbox", "0,nan,0.01,0.01"], "--bbox"),
    (["--region", "NAN_GEOJSON"], "NaN or infinite"),
    (["--region", "INF_GEOJSON"], "NaN or infinite"),
    (["--bbox", "0,0,0.01,0.01", "--metatile", "-1"], "--metatile"),
    (["--bbox", "0,0,0.01,0.01", "--split-levels", "-1"], "--split-levels"),
    (["--bbox", "0,0,0.01,0.01", "--workers", "-1"], "--workers"),
    (["--bbox", "0,0,0.01,0.01", "--workers", "0"], "--workers"),
    (["--bbox", "0,0,0.01,0.01", "--max-cloud", "nan"], "--max-cloud"),
    (["--bbox", "0,0,0.01,0.01", "--max-cloud", "-5"], "--max-cloud"),
    (["--bbox", "0,0,0.01,0.01", "--max-gap-days", "-1"], "--max-gap-days"),
    (["--bbox", "0,0,0.01,0.01", "--max-gap-days", "nan"], "--max-gap-days"),
    (["--bbox", "0,0,0.01,0.01", "--naip-years", "2022-2020"], "--naip-years"),
    (["--bbox", "0,0,0.01,0.01", "--min-valid", "nan"], "--min-valid"),
])
def test_bad_numbers_give_one_error_line_naming_the_option(tmp_path, args, mentions):
    args = [_geojson(tmp_path, float("nan")) if a == "NAN_GEOJSON" else _geojson(tmp_path, float("inf"))
            if a == "INF_GEOJSON" else a for a in args]
    _one_error_line(_build(tmp_path / "data", "--zoom", "15", *args), mentions)


def test_a_named_release_at_another_zoom_is_refused_before_anything_is_written(tmp_path):
    """`--release small --zoom 16` planned small's z15 tiles and cut their x/y as z16 tiles (other places,
    no error). Like `curate plan`, build refuses it: one line naming both zooms, --out not created."""
    from scale_alibi.regions import load_release

    own = load_release("small").zoom  # the preset's zoom, read from the preset itself
    for other in (own + 1, own - 1):
        line = _one_error_line(_build(tmp_path / "data", "--release", "small", "--zoom", str(other)),
                               f"--zoom {other}")
        assert f"zoom {own}" in line, line
        assert not (tmp_path / "data").exists()
    # The preset's own zoom given explicitly is the same build as omitting it: it passes validation,
    # and the unreachable catalog is what stops it.
    _one_error_line(_build(tmp_path / "data", "--release", "small", "--zoom", str(own)), "STAC catalog")


def test_stats_on_a_corrupt_manifest_or_png_gives_one_error_line(tmp_path):
    release = make_release(tmp_path, "r", nx=2, ny=1)
    png = release.tile_path("s2", 15, 5240, 12660)
    png.write_bytes(png.read_bytes()[:200])  # truncated
    _one_error_line(_invoke("stats", "--data", str(tmp_path), "--release", "r", "--split", "all"), "15/5240/12660")
    _one_error_line(_invoke("stats", "--data", str(tmp_path), "--release", "r", "--split", "all", "--workers", "2"),
                    "15/5240/12660")
    manifest = Release(tmp_path, "r").manifest_path
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    _one_error_line(_invoke("stats", "--data", str(tmp_path), "--release", "r"), "manifest")
    assert not (release.path / STATS_NAME).exists()


def test_a_caller_embedding_the_cli_without_standalone_mode_gets_the_user_error_itself():
    # click's contract for its own errors: printed and exit 2 standalone, raised to an embedding caller
    with pytest.raises(UserError, match="unknown release 'nope'") as caught:
        main.main(["plan", "--release", "nope"], standalone_mode=False)
    assert caught.value.exit_code == 2
