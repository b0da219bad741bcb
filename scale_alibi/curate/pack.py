"""`curate pack`: each layer of a finished release as one PMTiles v3 archive (PNG tiles).

    curate pack --data OUT --release R [--out DIR]

writes ``OUT/R/s1.pmtiles``, ``s2.pmtiles`` and ``naip.pmtiles`` beside the manifest (NAIP holds
zoom Y and the four Y+1 children of each triplet), each written atomically (temp + rename). With
``--out DIR`` they go to ``DIR/R/`` together with a copy of the manifest (written last) and of
``stats.json``: a release without the tile tree, which `curate serve --data DIR` serves from the
archives with the same bytes and ETags. Every tile is checked against the manifest's sha256.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import mercantile
import numpy as np
import pyarrow as pa

from scale_alibi.contract.archive import ArchiveExtent, archive_name, e7, has_tree, tile_ids, write_archive
from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import (
    ATTRIBUTION,
    HIRES_CHILDREN,
    LAYERS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA_VERSION,
    STATS_NAME,
    Release,
    content_hash,
    write_bytes_atomic,
)


def layer_tiles(layer: str, z: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, x, y) of every tile of `layer` for triplets (z, x, y): the triplets themselves, and for
    NAIP then each HIRES_CHILDREN child of every triplet (child k of all triplets, k = 0..3)."""
    if layer != "naip":
        return z, x, y
    zs = [z] + [z + 1] * len(HIRES_CHILDREN)
    xs = [x] + [2 * x + dx for dx, _ in HIRES_CHILDREN]
    ys = [y] + [2 * y + dy for _, dy in HIRES_CHILDREN]
    return np.concatenate(zs), np.concatenate(xs), np.concatenate(ys)


def layer_hashes(layer: str, table: pa.Table) -> list[str]:
    """The manifest's sha256 of each tile of `layer`, in `layer_tiles` order."""
    if layer != "naip":
        return table.column(f"hash_{layer}").to_pylist()
    hires = table.column("hash_naip_hires").to_pylist()
    return table.column("hash_naip").to_pylist() + [h[k] for k in range(len(HIRES_CHILDREN)) for h in hires]


def tile_id_order(z: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tile ids, the permutation that sorts them): archives are written in tile-id order."""
    ids = np.empty(len(z), dtype=np.uint64)
    for level in np.unique(z):
        at = z == level
        ids[at] = tile_ids(int(level), x[at], y[at])
    order = np.argsort(ids, kind="stable")
    if len(ids) > 1 and not bool(np.all(np.diff(ids[order]) > 0)):
        raise UserError("the release lists a tile twice; its manifest has duplicate (z, x, y) rows")
    return ids, order


def archive_header(tile_z: np.ndarray, z: np.ndarray, x: np.ndarray, y: np.ndarray) -> ArchiveExtent:
    """Header fields of an archive: zooms of its tiles (`tile_z`), bounds and center of triplets (z, x, y)."""
    zoom = int(z.min())
    at = z == zoom
    nw = mercantile.bounds(int(x[at].min()), int(y[at].min()), zoom)
    se = mercantile.bounds(int(x[at].max()), int(y[at].max()), zoom)
    west, north, east, south = nw.west, nw.north, se.east, se.south
    return {
        "min_zoom": int(tile_z.min()), "max_zoom": int(tile_z.max()),
        "min_lon_e7": e7(west), "min_lat_e7": e7(south), "max_lon_e7": e7(east), "max_lat_e7": e7(north),
        "center_zoom": zoom, "center_lon_e7": e7((west + east) / 2), "center_lat_e7": e7((south + north) / 2),
    }


def archive_metadata(release: str, layer: str, zoom: int, triplets: int, bounds: tuple[float, ...]) -> dict:
    """The archive's JSON metadata: TileJSON-like keys for map tools, and the release's own under `scale_alibi`."""
    return {
        "name": f"{release} {layer}",
        "description": f"{layer} tiles of scale-alibi release {release} (triplet zoom {zoom}"
                       + (f", NAIP also at {zoom + 1})" if layer == "naip" else ")"),
        "attribution": ATTRIBUTION[layer],
        "type": "baselayer",
        "format": "png",
        "bounds": list(bounds),
        "scale_alibi": {"release": release, "layer": layer, "zoom": zoom, "triplets": triplets,
                        "manifest_schema_version": MANIFEST_SCHEMA_VERSION, "attribution": ATTRIBUTION},
    }


def write_layer(path: Path, release: str, layer: str, z: np.ndarray, x: np.ndarray, y: np.ndarray,
                read: Callable[[int], bytes]) -> int:
    """Write the archive of `layer`'s tiles of triplets (z, x, y) to `path`; `read(i)` gives the bytes
    of tile i of `layer_tiles`. Returns the number of tiles."""
    lz, lx, ly = layer_tiles(layer, z, x, y)
    ids, order = tile_id_order(lz, lx, ly)
    header = archive_header(lz, z, x, y)
    bounds = tuple(header[k] / 1e7 for k in ("min_lon_e7", "min_lat_e7", "max_lon_e7", "max_lat_e7"))
    zoom = int(z.min())
    with write_archive(path) as writer:
        for i in order.tolist():
            writer.add(int(ids[i]), read(i))
        writer.finish(header, archive_metadata(release, layer, zoom, len(z), bounds))
    return len(ids)


def copy_manifest(source: Path, target: Path) -> None:
    """Copy a manifest atomically, keeping its mtime: served tars stamp their members with it, so the
    copy serves byte-identical triplets and shards. Written last: it makes the copy a finished release."""
    tmp = target.parent / f".{target.name}.pack.tmp"
    try:
        shutil.copy2(source, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pack_release(root: Path, name: str, out: Path | None = None,
                 echo: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Write the three layer archives of finished release `name` under `root` (see the module docstring)."""
    release = Release(Path(root), name)
    if not release.is_finished:
        raise UserError(f"no finished release {name!r} under {root} (no {MANIFEST_NAME}); "
                        "check --data and --release, or finish it with `curate build`")
    table = release.read_manifest()
    if table.num_rows == 0:
        raise UserError(f"release {name!r} has no triplets: nothing to pack")
    z, x, y = (table.column(c).to_numpy().astype(np.int64) for c in ("z", "x", "y"))
    target = Path(out) / name if out is not None else release.path
    if out is not None and target.resolve() == release.path.resolve():
        target = release.path
    if target != release.path and ((target / MANIFEST_NAME).exists() or has_tree(target)):
        raise UserError(f"{target} already holds a release or tiles; choose another --out or remove it")
    written = []
    for layer in LAYERS:
        lz, lx, ly = layer_tiles(layer, z, x, y)
        expected = layer_hashes(layer, table)

        def read(i: int, lz=lz, lx=lx, ly=ly, expected=expected, layer=layer) -> bytes:
            path = release.tile_path(layer, int(lz[i]), int(lx[i]), int(ly[i]))
            try:
                data = path.read_bytes()
            except OSError:
                raise UserError(f"tile {path.relative_to(release.path)} of the manifest cannot be read; "
                                f"rebuild release {name!r} with `curate build`") from None
            if content_hash(data) != expected[i]:
                raise UserError(f"tile {path.relative_to(release.path)} does not match the manifest's sha256; "
                                f"rebuild release {name!r} with `curate build`")
            return data

        path = target / archive_name(layer)
        n = write_layer(path, name, layer, z, x, y, read)
        echo(f"{layer}: {n} tiles -> {path}")
        written.append(path)
    if target != release.path:
        stats = release.path / STATS_NAME
        if stats.is_file():
            write_bytes_atomic(target / STATS_NAME, stats.read_bytes())
        copy_manifest(release.manifest_path, target / MANIFEST_NAME)
    return written
