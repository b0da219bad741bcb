"""Hostile PMTiles archives for tests: written by the real writers, then byte-patched.

`small_archive` writes a layer archive with `scale_alibi.contract.archive.ArchiveWriter` (what
`curate pack` uses); the `with_*` helpers rewrite one part of such a file (the root directory, a
leaf, the metadata, one tile) and its header, as an attacker editing the bytes would.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from pmtiles.tile import deserialize_header, serialize_header

from scale_alibi.contract.archive import HEADER_SIZE, ROOT_LIMIT, ArchiveWriter, Directory, tile_ids

EXTENT = {"min_zoom": 15, "max_zoom": 15, "min_lon_e7": 0, "min_lat_e7": 0, "max_lon_e7": 1, "max_lat_e7": 1,
          "center_zoom": 15, "center_lon_e7": 0, "center_lat_e7": 0}


def small_archive(path: Path, tiles: list[bytes], z: int = 15, x0: int = 5240, y0: int = 12660) -> Path:
    """An archive of `tiles` at zoom z along row y0 from x0, written by the project's writer."""
    ids = tile_ids(z, np.arange(x0, x0 + len(tiles)), np.full(len(tiles), y0))
    order = np.argsort(ids)
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        for i in order.tolist():
            w.add(int(ids[i]), tiles[i])
        w.finish({**EXTENT, "min_zoom": z, "max_zoom": z, "center_zoom": z}, {"name": "patched"})
    return path


def header(path: Path) -> dict:
    return dict(deserialize_header(path.read_bytes()[:HEADER_SIZE]))


def root(path: Path) -> Directory:
    h = header(path)
    raw = path.read_bytes()[h["root_offset"] : h["root_offset"] + h["root_length"]]
    return Directory.parse(gzip.decompress(raw))


def _put(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _set_header(path: Path, **changes: int) -> None:
    _put(path, 0, serialize_header({**header(path), **changes}))  # type: ignore[typeddict-item]


def with_root(path: Path, d: Directory) -> Path:
    """Replace the root directory (it must still fit in the first 16 KiB)."""
    raw = d.serialize()
    assert HEADER_SIZE + len(raw) <= ROOT_LIMIT
    _put(path, HEADER_SIZE, raw)
    _set_header(path, root_offset=HEADER_SIZE, root_length=len(raw))
    return path


def with_entry(path: Path, i: int, **values: int) -> Path:
    """Set fields (offset, length, run_length) of root entry `i`."""
    d = root(path)
    arrays = {k: getattr(d, k).copy() for k in ("tile_id", "offset", "length", "run_length")}
    for k, v in values.items():
        arrays[k][i] = np.uint64(v)
    return with_root(path, Directory(**arrays))


def gzip_bomb(decompressed_bytes: int) -> bytes:
    """A gzip member of `decompressed_bytes` zero bytes (about 1/1000 of that compressed)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [z.compress(chunk) for _ in range(decompressed_bytes >> 20)]
    return b"".join(parts) + z.flush()


def with_root_at_end(path: Path, raw: bytes) -> Path:
    """Append `raw` to the file and point the header's root directory at it (past the first 16 KiB)."""
    end = path.stat().st_size
    _put(path, end, raw)
    _set_header(path, root_offset=end, root_length=len(raw))
    return path


def with_leaf(path: Path, raw: bytes) -> Path:
    """Make the root one pointer to a leaf directory of bytes `raw`, appended as the leaf section."""
    end = path.stat().st_size
    _put(path, end, raw)
    first = int(root(path).tile_id[0])
    pointer = Directory(*(np.array([v], dtype=np.uint64) for v in (first, 0, len(raw), 0)))
    with_root(path, pointer)
    _set_header(path, leaf_directory_offset=end, leaf_directory_length=len(raw))
    return path


def with_metadata(path: Path, length: int) -> Path:
    """Point the metadata at `length` bytes (a hole of zeros: not gzip, not JSON) past the file's end."""
    end = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(end + length)  # sparse: no disk used
    _set_header(path, metadata_offset=end, metadata_length=length)
    return path


def png_announcing(png: bytes, width_px: int, height_px: int, colour_type: int | None = None) -> bytes:
    """`png` with its IHDR's size (and colour type) changed and its CRC made right again: a header
    a decoder believes, announcing however many pixels."""
    ihdr = bytearray(png[12:29])  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width_px, height_px)
    if colour_type is not None:
        ihdr[13] = colour_type
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]
