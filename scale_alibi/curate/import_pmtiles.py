"""`curate import-pmtiles`: a release from one PMTiles archive per modality (the paper's layout).

    curate import-pmtiles --s1 sar.pmtile --s2 visual.pmtile --naip hires.pmtile --out OUT --release R
                          [--zoom Y] [--unpack] [--heldout-fraction 0.25] [--split-levels 2]

The paper's authors publish each release as three archives of 256 px PNG tiles: Sentinel-1
(`sar`), Sentinel-2 (`visual`) and NAIP (`hires`, at zoom Y and Y+1). A triplet is a zoom-Y tile
present in all three whose four NAIP Y+1 children are present too; tiles of no triplet are left
out. Every tile is read once: checked to be a PNG, hashed (sha256, the manifest's hash) and
written to ``OUT/R/<layer>.pmtiles`` (the layout of `curate pack`, served as is by `curate
serve`) or, with ``--unpack``, to the XYZ tree ``OUT/R/<layer>/<z>/<x>/<y>.png``. The manifest
comes last. Splits are `scale_alibi.curate.pipeline.split_of`, computed as for a region build.

Manifest: the required columns only (`scale_alibi.contract.release.REQUIRED_COLUMNS`). The columns `curate
build` adds (scene ids, groups, acquisition dates, valid fractions, cloud cover, orbit, NAIP
year) are unknown for imported tiles, so they are absent rather than null; the file metadata
says where the tiles came from (`imported_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from pmtiles.tile import Compression, TileType, tileid_to_zxy

from scale_alibi import __version__
from scale_alibi.contract.archive import Archive, ArchiveError
from scale_alibi.contract.errors import UserError
from scale_alibi.contract.png import PNG_HEAD_BYTES, TILE_PX, tile_problem
from scale_alibi.contract.release import (
    HIRES_CHILDREN,
    LAYERS,
    MANIFEST_SCHEMA_VERSION,
    REQUIRED_COLUMNS,
    Release,
    check_release_name,
    content_hash,
    writable_release_dir,
    write_manifest,
)
from scale_alibi.curate.pack import layer_tiles, tile_id_order, write_layer
from scale_alibi.curate.pipeline import split_of

_TILE_COMPRESSION_OK = (Compression.NONE, Compression.UNKNOWN)  # PNG bytes stored as they are


def open_layer(layer: str, path: Path | None) -> Archive:
    """The archive given for `layer`, checked to be a PMTiles v3 archive of PNG tiles (else UserError)."""
    if path is None:
        raise UserError(f"--{layer} is missing; give one archive per modality: --s1, --s2 and --naip")
    try:
        archive = Archive.open(path)
    except ArchiveError as exc:
        raise UserError(f"--{layer} {path}: {exc}; pass a PMTiles v3 archive of PNG tiles") from None
    except OSError as exc:
        raise UserError(f"--{layer} {path} cannot be read ({exc.strerror}); check the path") from None
    h = archive.header
    if h["tile_type"] != TileType.PNG:
        archive.close()
        raise UserError(f"--{layer} {path} holds {h['tile_type'].name} tiles; only archives of PNG tiles "
                        "can be imported (tile type PNG)")
    if h["tile_compression"] not in _TILE_COMPRESSION_OK:
        archive.close()
        raise UserError(f"--{layer} {path} stores its tiles {h['tile_compression'].name}-compressed; "
                        "only uncompressed PNG tiles can be imported")
    try:
        scale_alibi = archive.metadata().get("scale_alibi")
    except ArchiveError as exc:
        archive.close()
        raise UserError(f"--{layer} {path}: {exc}; pass a PMTiles v3 archive of PNG tiles") from None
    schema = scale_alibi.get("manifest_schema_version") if isinstance(scale_alibi, dict) else None
    if isinstance(schema, int) and schema > MANIFEST_SCHEMA_VERSION:
        archive.close()
        raise UserError(f"--{layer} {path} was packed with manifest schema {schema}; this version reads "
                        f"up to {MANIFEST_SCHEMA_VERSION}: upgrade scale-alibi")
    return archive


def choose_zoom(archives: dict[str, Archive], zoom: int | None) -> int:
    """The triplet zoom Y: s1 and s2 at Y, NAIP at Y and Y+1 (the only such zoom, or `zoom`)."""
    spans = {layer: range(a.header["min_zoom"], a.header["max_zoom"] + 1) for layer, a in archives.items()}
    fits = [z for z in spans["s1"] if z in spans["s2"] and z in spans["naip"] and z + 1 in spans["naip"]]
    held = ", ".join(f"{layer} {r.start}-{r.stop - 1}" for layer, r in spans.items())
    if zoom is not None:
        if zoom not in fits:
            raise UserError(f"--zoom {zoom} does not fit the archives' zooms ({held}); "
                            "s1 and s2 need zoom Y, naip zooms Y and Y+1")
        return zoom
    if len(fits) != 1:
        which = f"one of {', '.join(map(str, fits))}" if fits else "none fits"
        raise UserError(f"cannot tell the triplet zoom from the archives' zooms ({held}): pass --zoom ({which})")
    return fits[0]


def _positions(entries: tuple[np.ndarray, np.ndarray, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Index into an archive's sorted entries of each tile id, -1 where the archive lacks it."""
    have = entries[0]
    pos = np.searchsorted(have, ids)
    found = pos < len(have)
    found[found] = have[pos[found]] == ids[found]
    return np.where(found, pos, -1)


def find_triplets(entries: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the zoom-`zoom` tiles whose seven tiles (s1, s2, naip and four naip children) all exist."""
    first, last = ((1 << (2 * zoom)) - 1) // 3, ((1 << (2 * (zoom + 1))) - 1) // 3
    s1 = entries["s1"][0]
    at_zoom = s1[(s1 >= np.uint64(first)) & (s1 < np.uint64(last))]
    xy = np.array([tileid_to_zxy(int(t))[1:] for t in at_zoom.tolist()], dtype=np.int64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    z = np.full(len(x), zoom, dtype=np.int64)
    keep = np.ones(len(x), dtype=bool)
    for layer in ("s2", "naip"):
        lz, lx, ly = layer_tiles(layer, z, x, y)
        ids, _ = tile_id_order(lz, lx, ly)
        present = _positions(entries[layer], ids) >= 0
        keep &= present.reshape(-1, len(x)).all(axis=0)
    return x[keep], y[keep]


def import_release(out: Path, name: str, paths: dict[str, Path | None], zoom: int | None = None, unpack: bool = False,
                   heldout_fraction: float = 0.25, split_levels: int = 2,
                   echo: Callable[[str], None] = lambda m: None) -> Release:
    """Write release `name` under `out` from the archives `paths` (layer -> file); see the module docstring."""
    check_release_name(name)  # the rule `curate serve` and `curate verify` apply
    if not 0 <= heldout_fraction <= 1:
        raise UserError(f"--heldout-fraction {heldout_fraction} must be in [0, 1]")
    release = Release(writable_release_dir(out, name).parent, name)
    if release.is_finished:
        raise UserError(f"release {name!r} already exists in {out}; choose another --release or remove it")
    if not unpack and release.has_tree:
        # A tree takes precedence over archives when serving: a leftover one would hide them.
        raise UserError(f"{release.path} holds a tile tree from an earlier run; remove it, or pass --unpack")
    archives: dict[str, Archive] = {}
    try:
        for layer in LAYERS:
            archives[layer] = open_layer(layer, paths.get(layer))
        zoom = choose_zoom(archives, zoom)
        try:
            entries = {layer: a.entries() for layer, a in archives.items()}
        except ArchiveError as exc:
            raise UserError(f"{exc}; the archive cannot be imported") from None
        x, y = find_triplets(entries, zoom)
        if len(x) == 0:
            raise UserError(f"no zoom-{zoom} tile is in all three archives with its four NAIP zoom-{zoom + 1} "
                            "children; check that the archives cover the same area")
        order = np.lexsort((y, x))
        x, y = x[order], y[order]
        z = np.full(len(x), zoom, dtype=np.int64)
        echo(f"release {name}: {len(x)} triplets at zoom {zoom}")
        for layer in LAYERS:  # before anything is written
            _check_tiles(layer, archives[layer], entries[layer], z, x, y)
        hashes = {layer: _copy_layer(release, layer, archives[layer], entries[layer], z, x, y, unpack, echo)
                  for layer in LAYERS}
        n = len(x)
        columns = {
            "z": z, "x": x, "y": y,
            "split": [split_of(zoom, int(a), int(b), heldout_fraction, split_levels) for a, b in zip(x, y)],
            "hash_s1": hashes["s1"], "hash_s2": hashes["s2"], "hash_naip": hashes["naip"][:n],
            "hash_naip_hires": [list(h) for h in zip(*(hashes["naip"][n * (k + 1): n * (k + 2)]
                                                      for k in range(len(HIRES_CHILDREN))))],
        }
        table = pa.table({c: pa.array(v, type=REQUIRED_COLUMNS[c]) for c, v in columns.items()})
        metadata = {
            "release": name, "zoom": zoom, "layout": "tree" if unpack else "pmtiles",
            "params": {"heldout_fraction": heldout_fraction, "split_levels": split_levels},
            "software": {"scale-alibi": __version__},
            "imported_from": {layer: _describe(a) for layer, a in archives.items()},
        }
        write_manifest(table, release.manifest_path, metadata)
    finally:
        for a in archives.values():
            a.close()
    echo(f"release {name}: {len(x)} triplets -> {release.path}")
    return release


def _describe(archive: Archive) -> dict:
    meta = archive.metadata()  # read once already by `open_layer`: it is a JSON object
    return {"file": Path(archive.name).name, "bytes": archive.size,
            "tiles": archive.header["addressed_tiles_count"],
            **{k: meta[k] for k in ("name", "attribution") if isinstance(meta.get(k), str)}}


def _layer_positions(layer: str, entries, z: np.ndarray, x: np.ndarray, y: np.ndarray):
    """(lz, lx, ly, tile-id order, index into `entries`) of the tiles of `layer` for triplets (z, x, y)."""
    lz, lx, ly = layer_tiles(layer, z, x, y)
    ids, order = tile_id_order(lz, lx, ly)
    return lz, lx, ly, order, _positions(entries, ids)


def _check_tiles(layer: str, archive: Archive, entries, z: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """UserError naming the first tile of `layer` for triplets (z, x, y) that is not a 256 px 8-bit PNG,
    from its header alone (33 bytes: a tile may announce gigapixels in a few kilobytes)."""
    lz, lx, ly, order, pos = _layer_positions(layer, entries, z, x, y)
    offsets, lengths = entries[1], entries[2]
    for i in order.tolist():  # tile-id order: the archive is read front to back
        problem = tile_problem(archive.pread(int(offsets[pos[i]]), min(int(lengths[pos[i]]), PNG_HEAD_BYTES)))
        if problem is not None:
            raise UserError(f"--{layer} tile {lz[i]}/{lx[i]}/{ly[i]} {problem}; a release's tiles are {TILE_PX} px "
                            "8-bit PNGs (NAIP's zoom Y+1 tiles too), so the archive cannot be imported")


def _copy_layer(release: Release, layer: str, archive: Archive, entries, z: np.ndarray, x: np.ndarray,
                y: np.ndarray, unpack: bool, echo: Callable[[str], None]) -> list[str]:
    """Read, check, hash and write every tile of `layer` for triplets (z, x, y); their sha256 in `layer_tiles` order."""
    lz, lx, ly, order, pos = _layer_positions(layer, entries, z, x, y)
    offsets, lengths = entries[1], entries[2]
    hashes: list[str] = [""] * len(pos)

    def read(i: int) -> bytes:
        data = archive.pread(int(offsets[pos[i]]), int(lengths[pos[i]]))
        where = f"--{layer} tile {lz[i]}/{lx[i]}/{ly[i]}"
        if len(data) != int(lengths[pos[i]]):
            raise UserError(f"{where} lies past the end of the archive (truncated file); download it again")
        hashes[i] = content_hash(data)
        return data

    if unpack:
        for i in order.tolist():  # tile-id order: the archive is read front to back
            path = release.tile_path(layer, int(lz[i]), int(lx[i]), int(ly[i]))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(read(i))  # the manifest, written last, is the commit point
        echo(f"{layer}: {len(pos)} tiles -> {release.path / layer}")
    else:
        path = release.archive_path(layer)
        write_layer(path, release.name, layer, z, x, y, read)
        echo(f"{layer}: {len(pos)} tiles -> {path}")
    return hashes
