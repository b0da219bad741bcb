"""Small releases on disk for server tests: real PNG tiles, a manifest, and hostile extras.

`make_release` writes a finished release in the `scale_alibi.contract.release` layout (varied PNG content, a
manifest via `write_manifest`). `make_data_dir` lays out a data directory with everything the
path-safety tests need: a clean release, an unfinished one, a tile on disk but not in the
manifest, symlinks pointing outside, and a canary file outside the data directory.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from scale_alibi.contract.release import HIRES_CHILDREN, LAYERS, Release, content_hash, write_manifest

Z = 15
X0, Y0 = 5240, 12660  # the example tile 15/5241/12661 lies inside the default grid


_YY, _XX = np.mgrid[0:256, 0:256]


def tile_png(seed: int, mode: str = "RGB") -> bytes:
    """A 256 px PNG: a gradient, 32 px blocks and noise, all seeded (varied, partly compressible)."""
    rng = np.random.default_rng(seed)
    bands = 1 if mode == "L" else 3
    a, c = rng.uniform(-0.4, 0.4, 2)
    base = (_XX * a + _YY * c).astype(np.int16)[..., None]
    blocks = rng.integers(0, 160, size=(8, 8, bands), dtype=np.int16).repeat(32, 0).repeat(32, 1)
    noise = rng.integers(0, 24, size=(256, 256, bands), dtype=np.int16)
    arr = np.clip(48 + base + blocks + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return content_hash(data)


def make_release(root: Path, name: str, nx: int = 4, ny: int = 3, z: int = Z, x0: int = X0, y0: int = Y0,
                 seed: int = 0, finished: bool = True, heldout_every: int = 4,
                 tile: Callable[[int], bytes] | None = None) -> Release:
    """Write an nx x ny block of triplets at zoom z (tiles `tile(seed)`, default `tile_png`); with
    `finished`, also its manifest."""
    tile = tile or tile_png
    release = Release(Path(root), name)
    rows = []
    k = 0
    for x in range(x0, x0 + nx):
        for y in range(y0, y0 + ny):
            s = seed * 1_000_003 + k * 17
            hashes = {layer: _write(release.tile_path(layer, z, x, y), tile(s + i)) for i, layer in enumerate(LAYERS)}
            hires = [
                _write(release.tile_path("naip", z + 1, 2 * x + dx, 2 * y + dy), tile(s + 3 + j))
                for j, (dx, dy) in enumerate(HIRES_CHILDREN)
            ]
            rows.append({
                "z": z, "x": x, "y": y,
                "split": "heldout" if heldout_every and k % heldout_every == heldout_every - 1 else "train",
                "hash_s1": hashes["s1"], "hash_s2": hashes["s2"], "hash_naip": hashes["naip"],
                "hash_naip_hires": hires,
                "s2_datetime": f"2023-06-{1 + k % 28:02d}T17:00:00Z",
            })
            k += 1
    if finished:
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("z", pa.int32()), ("x", pa.int64()), ("y", pa.int64()), ("split", pa.string()),
            ("hash_s1", pa.string()), ("hash_s2", pa.string()), ("hash_naip", pa.string()),
            ("hash_naip_hires", pa.list_(pa.string())), ("s2_datetime", pa.string()),
        ]))
        write_manifest(table, release.manifest_path, {"release": name, "zoom": z, "factory": True})
    return release


@dataclass
class DataDir:
    """A data directory for server tests and what is hidden in and around it."""

    root: Path  # holds data/, the canary and the outside release
    data: Path
    canary: Path
    canary_text: str
    small: Release  # clean, finished
    extra_tile: tuple[str, int, int, int]  # on disk in `small`, not in its manifest
    evil_symlinked_tile: tuple[str, int, int, int]  # in evil's manifest, a symlink to the canary
    evil_unlisted_link: tuple[str, int, int, int]  # symlink to the canary, not in the manifest
    evil_dirlink_tile: tuple[str, int, int, int]  # in the manifest, its directory links outside
    not_served: tuple[str, ...] = ("unfinished", "escape")


def make_data_dir(root: Path, nx: int = 4, ny: int = 3) -> DataDir:
    """Lay out root/data with releases small, evil, unfinished, escape (symlink out) and a canary."""
    root = Path(root)
    data = root / "data"
    data.mkdir(parents=True)
    canary_text = "CANARY-" + secrets.token_hex(16)
    canary = root / "canary.txt"
    canary.write_text(canary_text)

    small = make_release(data, "small", nx=nx, ny=ny)
    extra = ("s2", Z, X0 + nx + 5, Y0)
    _write(small.tile_path(*extra), tile_png(999))

    make_release(data, "unfinished", nx=1, ny=1, seed=2, finished=False)

    # A finished release outside the data directory, linked in: must not be served.
    make_release(root / "elsewhere", "outside", nx=1, ny=1, seed=3)
    os.symlink(root / "elsewhere" / "outside", data / "escape")

    evil = make_release(data, "evil", nx=2, ny=1, seed=4, heldout_every=0)
    symlinked = ("s2", Z, X0, Y0)
    p = evil.tile_path(*symlinked)
    p.unlink()
    os.symlink(canary, p)
    unlisted = ("s1", Z, X0, Y0 + 100)
    os.symlink(canary, evil.tile_path(*unlisted))
    # naip children column 2*(X0+1)+1 of the second triplet: a directory symlink to outside.
    col = evil.path / "naip" / str(Z + 1) / str(2 * (X0 + 1) + 1)
    outside_col = root / "outside_col"
    col.rename(outside_col)
    for f in outside_col.iterdir():
        f.write_text(canary_text)
    os.symlink(outside_col, col)
    dirlink = ("naip", Z + 1, 2 * (X0 + 1) + 1, 2 * Y0)
    return DataDir(root, data, canary, canary_text, small, extra, symlinked, unlisted, dirlink)


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` ('/'-relative path -> bytes): two releases compared byte for byte,
    leftovers (staging, locks, temp files) included."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def rewritten_manifest(raw: bytes, edit) -> bytes:
    """The manifest in `raw` with its table edited by `edit` (pa.Table -> pa.Table), written back by
    pyarrow with the footer's key-value metadata kept: a manifest edited as a person or a tool would
    (`pq.write_table(edit(pq.read_table(...)))` with its metadata), not through `write_manifest`."""
    f = pq.ParquetFile(pa.BufferReader(raw))
    kv = {k: v for k, v in f.metadata.metadata.items() if k != b"ARROW:schema"}
    sink = io.BytesIO()
    pq.write_table(edit(f.read()).replace_schema_metadata(kv), sink)
    return sink.getvalue()


def edit_manifest(release: Release, edit) -> None:
    """Rewrite `release`'s manifest in place with `rewritten_manifest`."""
    release.manifest_path.write_bytes(rewritten_manifest(release.manifest_path.read_bytes(), edit))
