"""Every command that writes a release refuses one whose directory, or a layer directory in it,
resolves outside its root or into another release (contract.release.writable_release_dir): one
`error:` line, and the files the link leads to stay byte for byte as they were."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.contract.release import LAYERS
from tests.cli_errors import one_error_line
from tests.release_factory import file_tree, make_release

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a build that got past the guard would say so


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_build_refuses_a_layer_directory_linked_to_another_release(tmp_path):
    out = tmp_path / "out"
    other = make_release(out, "other", nx=2, ny=1)
    before = file_tree(out)
    (out / "new").mkdir()
    os.symlink(other.path / "s2", out / "new" / "s2")
    result = _invoke("build", "--catalog", UNREACHABLE, "--signer", "none", "--no-progress", "--scheduler",
                     "synchronous", "--out", str(out), "--bbox", "0,0,0.01,0.01", "--zoom", "15", "--release", "new")
    one_error_line(result, "into the release 'other'")
    assert file_tree(other.path) == {k.removeprefix("other/"): v for k, v in before.items()}


def test_a_layer_directory_linked_out_of_the_root_is_refused(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (outside / "naip").mkdir(parents=True)
    (outside / "naip" / "keep.txt").write_text("precious")
    (out / "new").mkdir(parents=True)
    os.symlink(outside / "naip", out / "new" / "naip")
    result = _invoke("build", "--catalog", UNREACHABLE, "--signer", "none", "--no-progress", "--scheduler",
                     "synchronous", "--out", str(out), "--bbox", "0,0,0.01,0.01", "--zoom", "15", "--release", "new")
    one_error_line(result, "resolves outside the output directory")
    assert file_tree(outside) == {"naip/keep.txt": b"precious"}


def _linked_release(tmp_path: Path) -> tuple[Path, Path]:
    """(data root whose release `r` is a symlink to a release elsewhere, that release's real directory)."""
    real = make_release(tmp_path / "elsewhere", "r", nx=2, ny=2)
    (tmp_path / "data").mkdir()
    os.symlink(real.path, tmp_path / "data" / "r")
    return tmp_path / "data", real.path


def test_pack_and_stats_refuse_to_write_through_a_symlinked_release_directory(tmp_path):
    data, real = _linked_release(tmp_path)
    before = file_tree(tmp_path / "elsewhere")
    one_error_line(_invoke("pack", "--data", str(data), "--release", "r"), "resolves outside its own place")
    one_error_line(_invoke("stats", "--data", str(data), "--release", "r"), "resolves outside its own place")
    assert file_tree(tmp_path / "elsewhere") == before


def test_pack_refuses_an_out_whose_release_directory_is_a_link(tmp_path):
    make_release(tmp_path / "data", "r", nx=2, ny=2)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (tmp_path / "packed").mkdir()
    os.symlink(victim, tmp_path / "packed" / "r")
    result = _invoke("pack", "--data", str(tmp_path / "data"), "--release", "r", "--out", str(tmp_path / "packed"))
    one_error_line(result, "resolves outside its own place")
    assert file_tree(victim) == {"keep.txt": b"precious"}


def test_import_pmtiles_refuses_a_release_directory_that_is_a_link(tmp_path):
    make_release(tmp_path / "data", "r", nx=2, ny=2)
    assert _invoke("pack", "--data", str(tmp_path / "data"), "--release", "r").exit_code == 0
    archives = {layer: tmp_path / "data" / "r" / f"{layer}.pmtiles" for layer in LAYERS}
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (tmp_path / "out").mkdir()
    os.symlink(victim, tmp_path / "out" / "imported")
    result = _invoke("import-pmtiles", *(a for layer, p in archives.items() for a in (f"--{layer}", str(p))),
                     "--out", str(tmp_path / "out"), "--release", "imported")
    one_error_line(result, "resolves outside its own place")
    assert file_tree(victim) == {"keep.txt": b"precious"}
    # The same archives import into a plain directory: the refusal is the link's, not the archives'.
    ok = _invoke("import-pmtiles", *(a for layer, p in archives.items() for a in (f"--{layer}", str(p))),
                 "--out", str(tmp_path / "out"), "--release", "plain")
    assert ok.exit_code == 0, ok.output


def test_verify_repair_refuses_a_layer_directory_linked_into_another_release(tmp_path):
    make_release(tmp_path / "data", "a", nx=2, ny=1)
    other = make_release(tmp_path / "data", "b", nx=2, ny=1, seed=5)
    before = file_tree(other.path)
    a_s2 = tmp_path / "data" / "a" / "s2"
    os.rename(a_s2, tmp_path / "a-s2")
    os.symlink(other.path / "s2", a_s2)
    result = _invoke("verify", "--data", str(tmp_path / "data"), "--release", "a", "--repair", "--no-progress")
    one_error_line(result, "into the release 'b'")
    assert file_tree(other.path) == before
