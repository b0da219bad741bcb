"""`curate pack`: each layer of a finished release as one PMTiles v3 archive (PNG tiles).

    curate pack --data OUT --release R [--out DIR]

writes ``OUT/R/s1.pmtiles``, ``s2.pmtiles`` and ``naip.pmtiles`` beside the manifest (NAIP holds
zoom Y and the four Y+1 children of each triplet), each written atomically (temp + rename). With
``--out DIR`` they go to ``DIR/R/`` together with a copy of the manifest (written last) and of
``stats.json``: a release without the tile tree, which `curate serve --data DIR` serves from the
archives with the same bytes and ETags. Every tile is checked against the manifest's sha256, and the
manifest against its seal before anything is written. OUT and DIR may be object-store URLs
(``s3://bucket/prefix``): the release is read through `scale_alibi.contract.reader`, and each archive
is written to a local temporary file and uploaded whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import mercantile
import numpy as np
import pyarrow as pa

from scale_alibi.contract.archive import ArchiveExtent, e7, tile_ids, write_archive
from scale_alibi.contract.errors import UserError
from scale_alibi.contract.reader import StoredRelease
from scale_alibi.contract.release import (
    ATTRIBUTION,
    HIRES_CHILDREN,
    LAYERS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA_VERSION,
    STATS_NAME,
    confine,
    content_hash,
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


def pack_release(root: str | os.PathLike[str], name: str, out: str | os.PathLike[str] | None = None,
                 echo: Callable[[str], None] = lambda m: None) -> list[str]:
    """Write the three layer archives of finished release `name` under `root` (see the module docstring).
    `root` and `out` are directories or object-store URLs; returns where each archive went."""
    source = StoredRelease(root, name)
    table = source.manifest().table  # checked before anything is written: a manifest that lies packs nothing
    if table.num_rows == 0:
        raise UserError(f"release {name!r} has no triplets: nothing to pack")
    z, x, y = (table.column(c).to_numpy().astype(np.int64) for c in ("z", "x", "y"))
    target = source if out is None else StoredRelease(out, name)
    if target.remote == source.remote and (
            target.path == source.path if target.remote else os.path.realpath(target.path) == os.path.realpath(source.path)):
        target = source
    target.check_writable()
    if target is not source and (target.is_finished() or target.has_tree()):
        raise UserError(f"{target.location} already holds a release or tiles; choose another --out or remove it")
    read_tile = source.tiles()
    written = []
    for layer in LAYERS:
        lz, lx, ly = layer_tiles(layer, z, x, y)
        expected = layer_hashes(layer, table)

        def read(i: int, lz=lz, lx=lx, ly=ly, expected=expected, layer=layer) -> bytes:
            where = f"{layer} tile {int(lz[i])}/{int(lx[i])}/{int(ly[i])}"
            try:
                data = read_tile(layer, int(lz[i]), int(lx[i]), int(ly[i]))
            except OSError:
                raise UserError(f"{where} of the manifest cannot be read; rebuild release {name!r} with "
                                "`curate build`") from None
            if content_hash(data) != expected[i]:
                raise UserError(f"{where} does not match the manifest's sha256; rebuild release {name!r} with "
                                "`curate build`")
            return data

        rel = Path(target.archive_key(layer)).name
        if target.remote:
            with tempfile.TemporaryDirectory(prefix="scale-alibi-pack-") as tmp:
                n = write_layer(Path(tmp) / rel, name, layer, z, x, y, read)
                target.put(rel, Path(tmp) / rel)  # one PUT of the whole archive
        else:
            os.makedirs(target.path, exist_ok=True)
            n = write_layer(confine(target.archive_key(layer), target.path), name, layer, z, x, y, read)
        echo(f"{layer}: {n} tiles -> {target.archive_key(layer)}")
        written.append(target.archive_key(layer))
    if target is not source:
        stats = source.read(STATS_NAME)
        if stats is not None:
            target.write(STATS_NAME, stats)
        if not source.remote and not target.remote:
            copy_manifest(Path(source.key(MANIFEST_NAME)), Path(target.key(MANIFEST_NAME)))
        else:
            raw = source.read(MANIFEST_NAME)
            if raw is None:
                raise UserError(f"the manifest of {source.location} vanished while it was packed; pack it again")
            target.write(MANIFEST_NAME, raw)  # last: it makes the copy a finished release
    return written
