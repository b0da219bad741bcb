"""The content check a user runs: `curate verify --content` lists tiles that are mostly one value,
`curate stats --histogram` draws per-layer histograms; on a release whose tiles are known by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from scale_alibi.contract.release import content_hash, manifest_metadata, write_manifest
from scale_alibi.curate.content import GAP_H, HISTOGRAM_STRIPS, STRIP_H, constant_tiles, histograms, most_common
from scale_alibi.curate.encode import decode_png, encode_png
from tests.release_factory import make_release


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scale_alibi", *args], capture_output=True, text=True, timeout=300)


def replace_tile(rel, layer: str, z: int, x: int, y: int, img: np.ndarray) -> None:
    """Overwrite one tile and its hash in the manifest (a release that is intact, but shows `img`)."""
    png = encode_png(img)
    rel.tile_path(layer, z, x, y).write_bytes(png)
    table = pq.read_table(rel.manifest_path)
    rows = table.to_pylist()
    for r in rows:
        if (r["z"], r["x"], r["y"]) == (z, x, y):
            r[f"hash_{layer}"] = content_hash(png)
    write_manifest(table.from_pylist(rows, schema=table.schema), rel.manifest_path, manifest_metadata(table))


def test_most_common_value_share_by_hand():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:1] = (7, 8, 9)  # 4 of 16 pixels
    assert most_common(img) == (0.75, (0, 0, 0))
    img[1:3] = (7, 8, 9)
    assert most_common(img) == (0.75, (7, 8, 9))


def test_verify_content_lists_the_black_and_the_flat_tiles(tmp_path):
    rel = make_release(tmp_path, "r", nx=2, ny=2)
    rows = pq.read_table(rel.manifest_path).to_pylist()
    z, x, y = rows[0]["z"], rows[0]["x"], rows[0]["y"]
    rng = np.random.default_rng(0)
    black = rng.integers(1, 255, (256, 256, 3), dtype=np.uint8)
    black[:, :180] = 0  # 180/256 = 70.3 % black, like an S1 tile cut from a 0-filled border
    replace_tile(rel, "s1", z, x, y, black)
    flat = np.full((256, 256, 3), (120, 130, 140), np.uint8)
    flat[:40] = rng.integers(0, 255, (40, 256, 3), dtype=np.uint8)  # 216/256 = 84.4 % one colour
    z2, x2, y2 = rows[3]["z"], rows[3]["x"], rows[3]["y"]
    replace_tile(rel, "s2", z2, x2, y2, flat)

    found = constant_tiles(rows, lambda name: (rel.path / name).read_bytes(), 0.5)
    # rows were read before the replacement: the check reads files, not hashes
    assert [(t.path, round(t.fraction, 4), t.value) for t in found] == [
        (f"s1/{z}/{x}/{y}.png", round(180 / 256, 4), (0, 0, 0)),
        (f"s2/{z2}/{x2}/{y2}.png", round(216 / 256, 4), (120, 130, 140))]

    run = curate("verify", "--data", str(tmp_path), "--release", "r", "--content", "--no-progress")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"constant: s1/{z}/{x}/{y}.png: 70% of its pixels are (0, 0, 0)" in run.stdout
    assert f"constant: s2/{z2}/{x2}/{y2}.png: 84% of its pixels are (120, 130, 140)" in run.stdout
    assert "content: 2 tiles are more than 50% one value" in run.stdout
    assert "all 28 files of 4 triplets match the manifest" in run.stdout  # intact, but not imagery
    stricter = curate("verify", "--data", str(tmp_path), "--release", "r", "--content", "--max-constant", "0.8",
                      "--no-progress")
    assert stricter.returncode == 1 and "content: 1 tiles" in stricter.stdout
    plain = curate("verify", "--data", str(tmp_path), "--release", "r", "--no-progress")
    assert plain.returncode == 0 and "constant" not in plain.stdout


def test_stats_histogram_draws_each_layers_channels(tmp_path):
    rel = make_release(tmp_path, "h", nx=1, ny=1, heldout_every=0)
    (row,) = pq.read_table(rel.manifest_path).to_pylist()
    z, x, y = row["z"], row["x"], row["y"]
    s2 = np.zeros((256, 256, 3), np.uint8)
    s2[..., 0], s2[..., 1], s2[..., 2] = 10, 200, 0
    s2[:64, :, 2] = 255  # blue: a quarter at 255, the rest at 0
    replace_tile(rel, "s2", z, x, y, s2)
    hist = histograms([row], lambda name: (rel.path / name).read_bytes())
    assert hist["s2"][0, 10] == 65536 and hist["s2"][1, 200] == 65536
    assert hist["s2"][2, 255] == 16384 and hist["s2"][2, 0] == 49152
    assert hist["naip_hires"].sum() == 4 * 3 * 65536 and hist["naip"].sum() == 3 * 65536

    out = tmp_path / "plots" / "hist.png"
    run = curate("stats", "--data", str(tmp_path), "--release", "h", "--histogram", str(out))
    assert run.returncode == 0, run.stderr
    img = decode_png(out.read_bytes())
    assert img.shape == (len(HISTOGRAM_STRIPS) * (STRIP_H + GAP_H), 512, 3)

    def strip(name: str, channel: int) -> np.ndarray:
        i = [(n, c) for n, c, _ in HISTOGRAM_STRIPS].index((name, channel))
        return img[i * (STRIP_H + GAP_H): i * (STRIP_H + GAP_H) + STRIP_H]

    def bar_height(name: str, channel: int, value: int) -> int:
        return int((strip(name, channel)[:, 2 * value] != 255).any(axis=-1).sum())

    red = strip("s2", 0)
    assert bar_height("s2", 0, 10) == STRIP_H and (red[:, 22:] == 255).all() and (red[:, :20] == 255).all()
    assert bar_height("s2", 1, 200) == STRIP_H
    # log scale: 16384 of 49152 is log(16385) / log(49153) of the strip
    assert bar_height("s2", 2, 0) == STRIP_H
    assert bar_height("s2", 2, 255) == round(np.log1p(16384) / np.log1p(49152) * STRIP_H)


def test_a_histogram_path_that_cannot_be_written_is_one_error_line(tmp_path):
    make_release(tmp_path, "h", nx=1, ny=1, heldout_every=0)
    (tmp_path / "file").write_text("x")
    run = curate("stats", "--data", str(tmp_path), "--release", "h", "--split", "all",
                 "--histogram", str(tmp_path / "file" / "hist.png"))
    assert run.returncode == 2 and run.stderr.strip().startswith("error: cannot write --histogram")
    assert len(run.stderr.strip().splitlines()) == 1
