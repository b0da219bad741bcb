"""Where a release's tile bytes come from: its XYZ directory tree or its PMTiles archives, on a
local disk here, or in a bucket (scale_alibi.serve.bucket).

All are behind one interface, `TileSource.locate(layer, z, x, y) -> TileSpan`. On a local disk a
span is `size` bytes at `offset` of an open file (a tile file, or the layer's archive), read with
pread/preadv so archives are never loaded in memory; from a bucket it is the bytes one GET (of an
object, or of a range of an archive) fetched. A release directory with the tile tree is served from
the tree; one with the manifest and `s1.pmtiles`, `s2.pmtiles`, `naip.pmtiles` but no tree (what
`curate pack` or `curate import-pmtiles` leave) is served from the archives, with the same bytes.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from scale_alibi.contract.archive import Archive, ArchiveError, release_archives
from scale_alibi.contract.reader import tile_path
from scale_alibi.serve.catalog import ReleaseIndex
from scale_alibi.serve.files import SafeReader

log = logging.getLogger(__name__)

MAX_BATCH_TRIPLETS = 64  # a shard batch of small tiles: ~450 files, a few ms of reading


class TileSpan(ABC):
    """One tile's bytes, `size` of them; `st` describes the file holding them (None: bytes fetched
    from an object store, which are checked against the manifest at every fetch)."""

    size: int
    st: os.stat_result | None

    @abstractmethod
    def read(self) -> bytes:
        """The tile's bytes (fewer than `size` when the file turned out shorter)."""

    @abstractmethod
    def read_into(self, view: memoryview) -> bool:
        """Fill `view` (of length `size`); False when the file turned out shorter."""

    @abstractmethod
    def close(self) -> None:
        """Release what the span holds open (a file it opened for itself)."""


@dataclass(frozen=True)
class FileSpan(TileSpan):
    """`size` bytes at `offset` of open file `fd`, read with pread/preadv (never loaded whole)."""

    fd: int
    offset: int
    size: int
    st: os.stat_result  # of the file holding the bytes: changes when that file is rewritten
    owned: bool  # the file was opened for this span alone: `close` closes it
    keep: object = None  # the archive whose fd this is: kept alive (and its fd open) while the span is used

    def read(self) -> bytes:
        return os.pread(self.fd, self.size, self.offset)

    def read_into(self, view: memoryview) -> bool:
        got = 0
        while got < self.size:
            n = os.preadv(self.fd, [view[got:]], self.offset + got)
            if n <= 0:
                return False
            got += n
        return True

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)


@dataclass(frozen=True)
class FetchedSpan(TileSpan):
    """A tile's bytes already fetched (from an object store): in memory, so nothing to close."""

    data: bytes
    st: None = None

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.data)

    def read(self) -> bytes:
        return self.data

    def read_into(self, view: memoryview) -> bool:
        view[:] = self.data
        return True

    def close(self) -> None:
        pass  # nothing held open


class TileSource(ABC):
    """A release's tiles by address; safe to use from several threads."""

    # A shard is read in batches: one thread hop, one chunk and one socket writev each. On a local
    # disk, batches of ~BATCH_BYTES: the per-batch costs (thread hop, the ASGI send path) amortised
    # while the copies stay within the last-level cache (server CPU per MB streamed, docs/http-api.md
    # "Speed"); two batches are held per stream. The first batch has `batch_triplets` triplets, later
    # ones as many as the shard's triplets so far average to BATCH_BYTES (up to MAX_BATCH_TRIPLETS:
    # small tiles, many to a batch). A store that answers in round trips has a fixed count
    # (`batch_bytes` None), so that each batch fetches many tiles at once.
    batch_triplets = 4
    batch_bytes: int | None = 4 << 20

    def next_batch_triplets(self, triplets: int, nbytes: int) -> int:
        """Triplets in the next batch of a shard whose batches so far held `triplets` in `nbytes` bytes."""
        if self.batch_bytes is None or triplets <= 0 or nbytes <= 0:
            return self.batch_triplets
        return max(1, min(MAX_BATCH_TRIPLETS, self.batch_bytes * triplets // nbytes))

    @abstractmethod
    def locate(self, layer: str, z: int, x: int, y: int) -> TileSpan | None:
        """The span of tile (layer, z, x, y), or None when it is missing or unsafe to read; `close` it after use."""

    def locate_many(self, tiles: list[tuple[str, int, int, int]]) -> list[TileSpan | None]:
        """`locate` of each (layer, z, x, y), in order; spans that are not None must be closed."""
        spans: list[TileSpan | None] = []
        try:
            for tile in tiles:
                spans.append(self.locate(*tile))
        except BaseException:
            close_all(spans)
            raise
        return spans

    def read(self, layer: str, z: int, x: int, y: int) -> tuple[bytes, os.stat_result | None] | None:
        """The bytes of tile (layer, z, x, y) and the stat of the file holding them (None: fetched), or None."""
        span = self.locate(layer, z, x, y)
        if span is None:
            return None
        try:
            data = span.read()
        finally:
            span.close()
        return (data, span.st) if len(data) == span.size else None


def close_all(spans: list[TileSpan | None]) -> None:
    """Close every span in `spans` that is not None."""
    for span in spans:
        if span is not None:
            span.close()


class DirectorySource(TileSource):
    """Tiles as files of the release's XYZ tree, opened through the data directory's SafeReader."""

    def __init__(self, index: ReleaseIndex, reader: SafeReader):
        self.index = index
        self.reader = reader

    def locate(self, layer: str, z: int, x: int, y: int) -> TileSpan | None:
        opened = self.reader.open_fd(tile_path(self.index.path, layer, z, x, y))
        if opened is None:
            return None
        fd, st = opened
        return FileSpan(fd, 0, st.st_size, st, owned=True)


A = TypeVar("A", bound=Archive)


def find_in_archive(archives: dict[str, A], layer: str, z: int, x: int, y: int) -> tuple[A, tuple[int, int]] | None:
    """(archive, (offset, length)) of tile (layer, z, x, y) in a release's `archives`, or None. An
    archive found to lie when a leaf directory is first read is dropped from `archives` (logged
    once): its layer's tiles are then missing, at once, and the release's other layers keep serving."""
    archive = archives.get(layer)
    if archive is None:
        return None
    try:
        found = archive.locate(z, x, y)
    except ArchiveError as exc:
        if archives.pop(layer, None) is not None:
            log.error("%s; its tiles are no longer served", exc)
        return None
    return None if found is None else (archive, found)


class PMTilesSource(TileSource):
    """Tiles as byte ranges of the release's three PMTiles archives (kept open, never loaded)."""

    def __init__(self, archives: dict[str, Archive]):
        self.archives = archives

    def locate(self, layer: str, z: int, x: int, y: int) -> TileSpan | None:
        hit = find_in_archive(self.archives, layer, z, x, y)
        if hit is None:
            return None
        archive, (offset, size) = hit
        if archive.stat is None:  # set for an archive opened as a file
            return None
        return FileSpan(archive.fd, offset, size, archive.stat, owned=False, keep=archive)


def open_source(index: ReleaseIndex, reader: SafeReader) -> TileSource:
    """The release's archives when it has no tile tree and all three archives, else its tree."""

    def open_fd(path: str) -> int | None:
        # Through the SafeReader: an archive that links out of the data directory is not opened.
        opened = reader.open_fd(path)
        return None if opened is None else opened[0]

    def broken(layer: str, exc: ArchiveError) -> None:
        # Only this layer: the release's other archives keep serving.
        log.error("release %s: %s; its %s tiles are not served", index.name, exc, layer)

    archives = release_archives(index.path, open_fd, broken)
    return PMTilesSource(archives) if archives is not None else DirectorySource(index, reader)


class TileSources:
    """The tile source of each release the catalog serves, opened on first use by `open`."""

    def __init__(self, open: Callable[[ReleaseIndex], TileSource]):
        self.open = open
        self._sources: dict[str, tuple[ReleaseIndex, TileSource]] = {}
        self._lock = threading.Lock()

    def of(self, index: ReleaseIndex) -> TileSource:
        """The source of `index` (reopened when the catalog re-indexed the release)."""
        found = self._sources.get(index.name)
        if found is not None and found[0] is index:
            return found[1]
        with self._lock:
            found = self._sources.get(index.name)
            if found is None or found[0] is not index:
                # A replaced source's archives close when the last span reading them is gone (Archive.__del__).
                found = (index, self.open(index))
                self._sources[index.name] = found
        return found[1]
