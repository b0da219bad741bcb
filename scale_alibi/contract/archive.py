"""PMTiles v3 archives: one layer of a release in one file, read by byte ranges and written in one pass.

The header layout, tile ids and enums come from the `pmtiles` package (protomaps' reference
implementation); directories are encoded and decoded here with numpy, because the reference
code keeps Python objects per tile when writing (an entry and a de-duplication hash each) and
parses the whole root directory again at each look-up when reading. Here a
reader holds the root directory and an LRU of leaf directories, and never the tile data. A
writer holds 16 bytes per tile (tile id and length arrays) until `finish` builds the directories.

Files this module writes: header and root directory in the first 16 KiB, then the tile data
(clustered: in tile-id order, no run-length de-duplication, so every tile has its own bytes),
then the gzipped JSON metadata and the leaf directories. All offsets are explicit in the header,
as the specification requires, so any PMTiles reader opens them.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypedDict

import numpy as np
from pmtiles.tile import (
    Compression,
    HeaderDict,
    TileType,
    deserialize_header,
    serialize_header,
    zxy_to_tileid,
)

from scale_alibi.contract import layout
from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.release import LAYERS, atomic_file

HEADER_SIZE = 127
ROOT_LIMIT = 16384  # the header and the root directory must lie in the first 16 KiB
# Archives come from elsewhere (the paper's published ones): every size below is checked before
# anything is allocated or decompressed. A directory entry takes at least 4 bytes, so 16 MiB
# holds 4 million entries (this project's leaves hold 4096 or more: tens to hundreds of KiB).
DIRECTORY_LIMIT = 16 << 20  # decompressed bytes of one directory
METADATA_LIMIT = 16 << 20  # bytes of the JSON metadata, stored and decompressed
MAX_RUN = 1 << 31  # tiles one entry may repeat (the reference writers count runs in 32 bits)
_LEAF_CACHE = 256  # parsed leaf directories kept per open archive (4096+ entries, ~128 KiB each)
_LEAF_CACHE_ENTRIES = 1 << 23  # ...and at most this many entries in all (32 bytes each: 256 MiB)
_ROOT_TRY = 65536  # larger directories go straight to leaves


def release_archives(release_dir: str | os.PathLike[str],
                     open_fd: Callable[[str], int | None] | None = None,
                     on_error: Callable[[str, ArchiveError], None] | None = None) -> dict[str, Archive] | None:
    """The three layer archives of a release that has no tile tree, open; None when it has a tree or
    lacks an archive. `open_fd(path)` opens a file for reading (None: missing or refused).
    ArchiveError when a file is not a readable archive; with `on_error`, that archive's layer is
    instead reported (`on_error(layer, error)`) and left out, and the other layers returned."""
    if not layout.reads_archives(lambda name: os.path.isdir(os.path.join(release_dir, name)),
                                 lambda name: os.path.isfile(os.path.join(release_dir, name))):
        return None
    open_fd = open_fd or _open_existing
    archives: dict[str, Archive] = {}
    try:
        for layer in LAYERS:
            path = os.path.join(release_dir, layout.archive_name(layer))
            fd = open_fd(path)
            if fd is None:
                break
            try:
                archives[layer] = Archive(fd, path)
            except ArchiveError as exc:
                if on_error is None:
                    raise
                on_error(layer, exc)
        else:
            return archives
    except BaseException:
        for archive in archives.values():
            archive.close()
        raise
    for archive in archives.values():
        archive.close()
    return None


def _open_existing(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


class ArchiveError(ScaleAlibiError, ValueError):
    """A file that is not a PMTiles v3 archive this project can read (the message says why)."""


# ---------------------------------------------------------------------------------- tile ids

def tile_ids(z: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """PMTiles tile ids (Hilbert order within a zoom, zooms in order) of tiles (z, x, y), vectorised."""
    x = np.asarray(x, dtype=np.uint64).copy()
    y = np.asarray(y, dtype=np.uint64).copy()
    acc = np.full(x.shape, ((1 << (2 * z)) - 1) // 3, dtype=np.uint64)
    for a in range(z - 1, -1, -1):
        s = np.uint64(1 << a)
        rx = (x & s) != 0
        ry = (y & s) != 0
        acc += ((rx.astype(np.uint64) * 3) ^ ry.astype(np.uint64)) * s * s
        # rotate the quadrant (the reference's `rotate(s, x, y, rx, ry)`)
        flip = ~ry & rx
        x = np.where(flip, s - np.uint64(1) - (x & (s - np.uint64(1))), x & (s - np.uint64(1)))
        y = np.where(flip, s - np.uint64(1) - (y & (s - np.uint64(1))), y & (s - np.uint64(1)))
        x, y = np.where(~ry, y, x), np.where(~ry, x, y)
    return acc


# ---------------------------------------------------------------------------------- varints

def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 varints of `values`, concatenated."""
    v = np.asarray(values, dtype=np.uint64)
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for k in range(int(nbytes.max(initial=1))):
        has = nbytes > k
        chunk = (v[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[has] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + k] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(buf: bytes) -> np.ndarray:
    """Every unsigned LEB128 varint in `buf`, in order."""
    b = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if len(ends) == 0 or ends[-1] != len(b) - 1:
        raise ArchiveError("a directory ends in the middle of a number")
    starts = np.concatenate([[0], ends[:-1] + 1])
    sizes = ends - starts + 1
    if int(sizes.max()) > 10:
        raise ArchiveError("a directory holds a number longer than 64 bits")
    low = (b & 0x7F).astype(np.uint64)
    out = low[starts]
    for k in range(1, int(sizes.max())):  # most numbers are one or two bytes: few passes
        more = np.flatnonzero(sizes > k)
        out[more] |= low[starts[more] + k] << np.uint64(7 * k)
    return out


# ---------------------------------------------------------------------------------- directories

@dataclass(frozen=True)
class Directory:
    """Directory entries as arrays, sorted by tile id; run_length 0 marks a leaf directory pointer."""

    tile_id: np.ndarray  # uint64
    offset: np.ndarray  # uint64, relative to the tile data (or leaf) section
    length: np.ndarray  # uint64
    run_length: np.ndarray  # uint64

    def find(self, tile_id: int) -> int | None:
        """Index of the entry that holds `tile_id` (or the leaf that may), as the specification's find_tile."""
        i = int(np.searchsorted(self.tile_id, np.uint64(tile_id), side="right")) - 1
        if i < 0:
            return None
        run = int(self.run_length[i])
        if run == 0 or tile_id - int(self.tile_id[i]) < run:
            return i
        return None

    def serialize(self) -> bytes:
        """The gzipped directory bytes (varint columns: ids as deltas, offsets 0 when contiguous)."""
        n = len(self.tile_id)
        ids = np.diff(self.tile_id, prepend=np.uint64(0))
        contiguous = np.zeros(n, dtype=bool)
        contiguous[1:] = self.offset[1:] == self.offset[:-1] + self.length[:-1]
        offsets = np.where(contiguous, np.uint64(0), self.offset + np.uint64(1))
        body = encode_varints(np.concatenate([[np.uint64(n)], ids, self.run_length, self.length, offsets]))
        return gzip.compress(body, mtime=0)

    @classmethod
    def parse(cls, raw: bytes) -> Directory:
        """Decode directory bytes (already decompressed)."""
        v = decode_varints(raw)
        n = int(v[0])
        if len(v) != 1 + 4 * n:
            raise ArchiveError(f"a directory announces {n} entries but holds {(len(v) - 1) / 4:g}")
        ids, runs, lengths, offs = (v[1 + k * n : 1 + (k + 1) * n] for k in range(4))
        # Sums that pass 2^63 would wrap in uint64 and pass every later check: refuse them here
        # (float64 sums are exact enough to see that).
        if n and (float(ids.sum(dtype=np.float64)) >= 2.0**63 or float(lengths.sum(dtype=np.float64)) >= 2.0**63
                  or int(offs.max()) >= 1 << 63):
            raise ArchiveError("a directory holds tile ids, offsets or lengths beyond 2^63")
        if n > 1 and not bool(np.all(ids[1:] > 0)):
            raise ArchiveError("a directory's tile ids are not increasing")
        tile_id = np.cumsum(ids, dtype=np.uint64)
        # offset 0 means "right after the previous entry": carry the last explicit offset forward.
        explicit = offs != 0
        if n and not explicit[0]:
            raise ArchiveError("a directory's first entry has no offset")
        last = np.maximum.accumulate(np.where(explicit, np.arange(n), 0))
        ends = np.cumsum(lengths, dtype=np.uint64)
        starts = ends - lengths
        offset = (offs[last] - np.uint64(1)) + (starts - starts[last])
        return cls(tile_id, offset.astype(np.uint64), lengths, runs)


def _split_directories(d: Directory) -> tuple[bytes, bytes]:
    """(root bytes, leaf bytes): everything in the root if it fits, else leaves of 4096 entries or more."""
    # Encoding a whole large directory at once would hold ~200 bytes of temporaries per tile; a
    # root of 16 KiB cannot be worth trying beyond _ROOT_TRY entries.
    if len(d.tile_id) <= _ROOT_TRY:
        root = d.serialize()
        if HEADER_SIZE + len(root) <= ROOT_LIMIT:
            return root, b""
    leaf_size = 4096
    while True:
        leaves, pointers = [], []
        offset = 0
        for i in range(0, len(d.tile_id), leaf_size):
            part = Directory(*(a[i : i + leaf_size] for a in (d.tile_id, d.offset, d.length, d.run_length)))
            raw = part.serialize()
            pointers.append((int(d.tile_id[i]), offset, len(raw)))
            leaves.append(raw)
            offset += len(raw)
        ptr = np.array(pointers, dtype=np.uint64).reshape(-1, 3)
        root = Directory(ptr[:, 0], ptr[:, 1], ptr[:, 2], np.zeros(len(ptr), dtype=np.uint64)).serialize()
        if HEADER_SIZE + len(root) <= ROOT_LIMIT:
            return root, b"".join(leaves)
        leaf_size *= 2


# ---------------------------------------------------------------------------------- writing

class ArchiveExtent(TypedDict):
    """The header fields an archive's writer cannot know from its tiles alone: zooms, bounds and
    center, in the header's own units (degrees times 1e7, rounded to int)."""

    min_zoom: int
    max_zoom: int
    min_lon_e7: int
    min_lat_e7: int
    max_lon_e7: int
    max_lat_e7: int
    center_zoom: int
    center_lon_e7: int
    center_lat_e7: int


class ArchiveWriter:
    """Writes PNG tiles, given in increasing tile-id order, into an open binary file."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.f.seek(ROOT_LIMIT)  # tile data starts after the header and root directory's 16 KiB
        self._ids = array("Q")  # 8 bytes per tile each, not a Python int per tile
        self._lengths = array("Q")
        self._last_id = -1

    def add(self, tile_id: int, data: bytes) -> None:
        """Append one tile's bytes (tile ids must increase)."""
        if tile_id <= self._last_id:
            raise ValueError(f"tile ids must increase: {tile_id} after {self._last_id}")
        self._last_id = tile_id
        self._ids.append(tile_id)
        self._lengths.append(len(data))
        self.f.write(data)

    def finish(self, header: ArchiveExtent, metadata: dict) -> None:
        """Write metadata, directories and the header; `header` gives the archive's zooms, bounds and center."""
        if not self._ids:
            raise ValueError("an archive needs at least one tile")
        ids = np.frombuffer(self._ids, dtype=np.uint64)
        lengths = np.frombuffer(self._lengths, dtype=np.uint64)
        offsets = np.cumsum(lengths, dtype=np.uint64) - lengths
        directory = Directory(ids, offsets, lengths, np.ones(len(ids), dtype=np.uint64))
        root, leaves = _split_directories(directory)
        data_length = int(lengths.sum())
        meta = gzip.compress(json.dumps(metadata, sort_keys=True).encode(), mtime=0)
        meta_offset = ROOT_LIMIT + data_length
        self.f.seek(meta_offset)
        self.f.write(meta)
        self.f.write(leaves)
        full: HeaderDict = {
            **header,
            "version": 3,
            "root_offset": HEADER_SIZE, "root_length": len(root),
            "metadata_offset": meta_offset, "metadata_length": len(meta),
            "leaf_directory_offset": meta_offset + len(meta), "leaf_directory_length": len(leaves),
            "tile_data_offset": ROOT_LIMIT, "tile_data_length": data_length,
            "addressed_tiles_count": len(ids), "tile_entries_count": len(ids), "tile_contents_count": len(ids),
            "clustered": True, "internal_compression": Compression.GZIP, "tile_compression": Compression.NONE,
            "tile_type": TileType.PNG,
        }
        self.f.seek(0)
        self.f.write(serialize_header(full))
        self.f.write(root)


@contextmanager
def write_archive(path: Path) -> Iterator[ArchiveWriter]:
    """An ArchiveWriter on `contract.release.atomic_file(path)`: when the block ends without error (after
    the caller's `finish`), the archive appears whole and durable; readers never see half of it."""
    with atomic_file(path) as f:
        yield ArchiveWriter(f)


# ---------------------------------------------------------------------------------- reading

def _decompress(raw: bytes, compression: Compression, limit: int, what: str) -> bytes:
    """`raw` decompressed, refused (ArchiveError) past `limit` bytes without inflating the rest:
    a few KiB of gzip can stand for gigabytes of zeros."""
    if compression == Compression.NONE:
        out = raw
    elif compression == Compression.GZIP:
        try:
            inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # one gzip member, as the writers make
            out = inflate.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ArchiveError(f"{what} is not valid gzip ({exc})") from None
        if not inflate.eof and len(out) <= limit:
            raise ArchiveError(f"{what} is cut short (its gzip stream does not end)")
    else:
        raise ArchiveError(f"internal compression {compression.name} is not supported (gzip or none)")
    if len(out) > limit:
        raise ArchiveError(f"{what} holds over {limit >> 20} MiB once decompressed (a decompression bomb?)")
    return out


class Archive:
    """An open PMTiles v3 archive: look-ups by byte ranges (pread) on one file descriptor, thread-safe."""

    def __init__(self, fd: int, name: str):
        """Take ownership of `fd`, open for reading; `name` is used in messages."""
        self.fd = fd
        self.name = name
        self.stat: os.stat_result | None = os.fstat(fd)  # None: an archive read by range requests
        self._load(self.stat.st_size)

    def _load(self, size: int) -> None:
        """Read the header and the root directory of an archive of `size` bytes (read with `pread`)."""
        self.size = size
        name = self.name
        try:
            head = self.pread(0, HEADER_SIZE)
            if len(head) < HEADER_SIZE or not head.startswith(b"PMTiles"):
                raise ArchiveError(f"{name} is not a PMTiles archive (no PMTiles header)")
            if head[7] != 3:
                raise ArchiveError(f"{name} is PMTiles version {head[7]}; only version 3 is read")
            try:
                self.header = deserialize_header(head)
            except ValueError as exc:  # an unknown enum value
                raise ArchiveError(f"{name} has a corrupt header ({exc})") from None
            h = self.header
            end = max(h["root_offset"] + h["root_length"], h["metadata_offset"] + h["metadata_length"],
                      h["leaf_directory_offset"] + h["leaf_directory_length"],
                      h["tile_data_offset"] + h["tile_data_length"])
            if end > size:
                raise ArchiveError(f"{name} is truncated: its header addresses {end} bytes, the file has {size}")
            if h["root_offset"] + h["root_length"] > ROOT_LIMIT:
                raise ArchiveError(f"{name} has a root directory beyond its first {ROOT_LIMIT} bytes, "
                                   "which the PMTiles v3 specification forbids")
            self.root = self._directory(h["root_offset"], h["root_length"], "root directory")
        except BaseException:
            self.close()
            raise
        self._leaves: OrderedDict[tuple[int, int], Directory] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Archive:
        """Open the archive at `path` (ArchiveError if it is not one; OSError if unreadable)."""
        return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC), os.fspath(path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pread(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer at the end of the file)."""
        return os.pread(self.fd, length, offset)

    def metadata(self) -> dict:
        """The archive's JSON metadata."""
        h = self.header
        if h["metadata_length"] > METADATA_LIMIT:
            raise ArchiveError(f"{self.name} has {h['metadata_length']} bytes of metadata, over the "
                               f"{METADATA_LIMIT >> 20} MiB a tile archive's JSON metadata can need")
        raw = _decompress(self.pread(h["metadata_offset"], h["metadata_length"]), h["internal_compression"],
                          METADATA_LIMIT, f"{self.name}'s metadata")
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            raise ArchiveError(f"{self.name} has metadata that is not JSON") from None
        if not isinstance(meta, dict):
            raise ArchiveError(f"{self.name} has metadata that is not a JSON object")
        return meta

    def _directory(self, offset: int, length: int, what: str) -> Directory:
        """The directory at `offset` (absolute), checked: every entry addresses bytes inside its section."""
        raw = self.pread(offset, length)
        if len(raw) != length:
            raise ArchiveError(f"{self.name} is truncated: its {what} lies past the end of the file")
        try:
            d = Directory.parse(_decompress(raw, self.header["internal_compression"], DIRECTORY_LIMIT, f"its {what}"))
        except ArchiveError as exc:
            raise ArchiveError(f"{self.name} has a corrupt {what} ({exc})") from None
        h = self.header
        tiles = d.run_length > 0
        for entries, section, kind in ((tiles, h["tile_data_length"], "tile"), (~tiles, h["leaf_directory_length"], "leaf")):
            limit = np.uint64(section)
            lengths, offsets = d.length[entries], d.offset[entries]
            # offset <= limit - length once length <= limit: no sum that could wrap.
            if not bool(np.all(lengths <= limit)) or not bool(np.all(offsets <= limit - lengths)):
                raise ArchiveError(f"{self.name} has a corrupt {what}: a {kind} entry lies outside the "
                                   f"{section}-byte {kind} section")
        if bool(np.any(d.length[~tiles] == 0)):
            raise ArchiveError(f"{self.name} has a corrupt {what}: an empty leaf directory")
        if len(d.run_length) and int(d.run_length.max()) > MAX_RUN:
            raise ArchiveError(f"{self.name} has a corrupt {what}: a run of {int(d.run_length.max())} tiles")
        return d

    def _leaf(self, offset: int, length: int) -> Directory:
        key = (offset, length)
        with self._lock:
            found = self._leaves.get(key)
            if found is not None:
                self._leaves.move_to_end(key)
                return found
        leaf = self._directory(self.header["leaf_directory_offset"] + offset, length, "leaf directory")
        with self._lock:
            self._leaves[key] = leaf
            # Bounded in entries too: an archive's leaves may each be as large as DIRECTORY_LIMIT allows.
            while len(self._leaves) > 1 and (len(self._leaves) > _LEAF_CACHE or sum(
                    len(d.tile_id) for d in self._leaves.values()) > _LEAF_CACHE_ENTRIES):
                self._leaves.popitem(last=False)
        return leaf

    def locate_id(self, tile_id: int) -> tuple[int, int] | None:
        """(absolute offset, length) of tile `tile_id`, or None when the archive lacks it."""
        d = self.root
        for _ in range(4):  # the specification allows at most 3 levels of leaves
            i = d.find(tile_id)
            if i is None:
                return None
            if int(d.run_length[i]) == 0:
                d = self._leaf(int(d.offset[i]), int(d.length[i]))
                continue
            return self.header["tile_data_offset"] + int(d.offset[i]), int(d.length[i])
        return None

    def locate(self, z: int, x: int, y: int) -> tuple[int, int] | None:
        """(absolute offset, length) of tile (z, x, y), or None."""
        if not (0 <= z <= 31 and 0 <= x < 2**z and 0 <= y < 2**z):
            return None
        return self.locate_id(zxy_to_tileid(z, x, y))

    def read(self, z: int, x: int, y: int) -> bytes | None:
        """The bytes of tile (z, x, y), or None when the archive lacks it (or the file is cut short)."""
        found = self.locate(z, x, y)
        if found is None:
            return None
        data = self.pread(*found)
        return data if len(data) == found[1] else None

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile ids, absolute offsets, lengths) of every addressed tile, sorted by tile id (runs expanded)."""
        h = self.header
        # Runs expand to 24 bytes per tile here: no more tiles than the header counts (or, when it
        # does not count them, than its zooms hold).
        budget = [h["addressed_tiles_count"] or ((1 << (2 * (min(h["max_zoom"], 31) + 1))) - 1) // 3]
        parts = list(self._walk(self.root, 0, budget))
        ids, offsets, lengths = (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.uint64)
                                 for k in range(3))
        if len(ids) > 1 and not bool(np.all(np.diff(ids) > 0)):
            raise ArchiveError(f"{self.name} has directory entries out of tile-id order")
        return ids, offsets, lengths

    def _walk(self, d: Directory, depth: int, budget: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if depth > 3:
            raise ArchiveError(f"{self.name} nests leaf directories deeper than the specification allows")
        tiles = d.run_length > 0
        runs = d.run_length[tiles].astype(np.int64)
        budget[0] -= int(runs.sum())
        if budget[0] < 0:
            raise ArchiveError(f"{self.name}'s directories address more tiles than its header counts "
                               f"({self.header['addressed_tiles_count']})")
        starts = np.cumsum(runs) - runs
        step = (np.arange(int(runs.sum())) - np.repeat(starts, runs)).astype(np.uint64)
        base = np.uint64(self.header["tile_data_offset"])
        leaves = np.flatnonzero(~tiles)
        # Entries are in tile-id order: emit tiles and leaves interleaved in that order.
        bounds = np.concatenate([[0], np.searchsorted(np.flatnonzero(tiles), leaves), [int(tiles.sum())]])
        tile_pos = np.concatenate([[0], np.cumsum(runs)])
        for k in range(len(bounds) - 1):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            a, b = int(tile_pos[lo]), int(tile_pos[hi])
            if b > a:
                ids = np.repeat(d.tile_id[tiles][lo:hi], runs[lo:hi]) + step[a:b]
                yield ids, np.repeat(d.offset[tiles][lo:hi], runs[lo:hi]) + base, np.repeat(d.length[tiles][lo:hi], runs[lo:hi])
            if k < len(leaves):
                i = int(leaves[k])
                leaf = self._directory(self.header["leaf_directory_offset"] + int(d.offset[i]), int(d.length[i]),
                                       "leaf directory")
                yield from self._walk(leaf, depth + 1, budget)


def e7(degrees: float) -> int:
    """Degrees as the header's int32 of 1e-7 degrees."""
    return int(round(degrees * 10_000_000))
