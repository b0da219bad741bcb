"""Damaged releases: `curate verify` finds every damaged file and `--repair` restores the release
byte for byte; a rerun of `curate build` re-cuts missing or truncated files instead of calling the
release complete."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from shapely.geometry import box

from scale_alibi.cli.main import main
from scale_alibi.contract.release import Release, triplet_files
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
from tests.release_factory import file_tree


def _copy(built_release, tmp_path: Path) -> tuple[Release, Release]:
    """(the session's built release, a copy of it under tmp_path that a test may damage)."""
    root, name = built_release
    original = Release(root, name)
    shutil.copytree(original.path, tmp_path / name)
    return original, Release(tmp_path, name)


def _damage(rel: Release) -> dict[str, str]:
    """Truncate one file, delete one, flip a byte of one (three triplets far apart): {path: how}."""
    rows = rel.read_manifest().to_pylist()
    picks = [(rows[0], 1, "truncated"), (rows[len(rows) // 2], 4, "deleted"), (rows[-1], 0, "flipped")]
    done = {}
    for row, member, how in picks:
        path = triplet_files(row)[member][0]
        p = rel.path / path
        data = p.read_bytes()
        if how == "truncated":
            p.write_bytes(data[: len(data) // 2])
        elif how == "deleted":
            p.unlink()
        else:
            p.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
        done[path] = how
    return done


def _verify(rel: Release, *args: str):
    return CliRunner().invoke(main, ["verify", "--data", str(rel.root), "--release", rel.name, "--no-progress", *args])


def test_verify_lists_each_damaged_file_and_repair_restores_the_release_byte_identical(built_release, world, tmp_path):
    original, rel = _copy(built_release, tmp_path)
    clean = _verify(rel)
    assert clean.exit_code == 0 and "match the manifest" in clean.output, clean.output

    damaged = _damage(rel)
    found = _verify(rel)
    assert found.exit_code == 1, found.output
    listed = [ln.split(": ")[1] for ln in found.output.splitlines() if ln.startswith("damaged: ")]
    assert sorted(listed) == sorted(damaged), found.output
    assert "--repair" in found.output.splitlines()[-1]

    fixed = _verify(rel, "--repair", "--signer", "none")  # the catalog is the one the manifest records
    assert fixed.exit_code == 0, fixed.output
    assert file_tree(rel.path) == file_tree(original.path)
    again = _verify(rel)
    assert again.exit_code == 0, again.output


def test_repair_replaces_nothing_when_the_catalog_now_yields_other_bytes(built_release, world, tmp_path, monkeypatch):
    from scale_alibi.curate import encode as encode_module

    _, rel = _copy(built_release, tmp_path)
    path = triplet_files(rel.read_manifest().to_pylist()[0])[1][0]  # an s2 tile
    (rel.path / path).write_bytes(b"not a png")
    # The scenes changed since the build: the re-cut gives other pixels (here: upside down).
    encode = encode_module.encode_hwc
    monkeypatch.setattr(encode_module, "encode_hwc", lambda layer, hwc, *a: encode(layer, hwc[::-1].copy(), *a))
    result = _verify(rel, "--repair", "--signer", "none")
    assert result.exit_code == 1, result.output
    assert f"not repaired: {path}: re-cut bytes differ from the manifest" in result.output
    assert (rel.path / path).read_bytes() == b"not a png"
    assert not (rel.path / ".build").exists() and not (rel.path / ".lock").exists()


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_rerun_of_a_finished_release_recuts_a_deleted_or_truncated_file(built_release, world, tmp_path, how):
    original, rel = _copy(built_release, tmp_path)
    path = rel.path / triplet_files(rel.read_manifest().to_pylist()[3])[2][0]
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-40])
    said = []
    result = build_release(tmp_path, resolve_request(zoom=17, region=box(*world.bbox), release=rel.name, catalog=world.stac_url),
                           RunOptions(signer="none", scheduler="synchronous", progress=False, echo=said.append))
    assert result.already_finished
    assert not any("nothing to do" in s for s in said), said
    assert any("repaired 1 files" in s for s in said), said
    assert file_tree(rel.path) == file_tree(original.path)


def test_verify_of_an_unfinished_or_unknown_release_is_one_error_line_and_exit_2(tmp_path):
    (tmp_path / "half").mkdir()  # a build that never wrote its manifest
    for name in ("half", "nope"):
        result = _verify(Release(tmp_path, name))
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, result.output
