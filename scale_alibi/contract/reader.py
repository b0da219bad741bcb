"""The one reader of a release on a store: a local directory or any fsspec URL (``s3://bucket/prefix``).

`StoredRelease(root, name)` is release `name` under data root `root`, wherever that lies. It reads the
release's files (never through a link that leads out of it), its manifest (parsed and checked:
`scale_alibi.contract.manifest`), and its tiles from its XYZ tree or, when it has none, from its
PMTiles archives (the rule: `scale_alibi.contract.layout.reads_archives`), read by range. Every
command that reads a release (`curate stats`, `pack`, `verify`, `import-pmtiles`, `train --data`,
`eval`, the server's stores) reads it through here, so each takes a bucket URL as well as a path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from scale_alibi.contract import layout
from scale_alibi.contract.archive import Archive, ArchiveError
from scale_alibi.contract.errors import UserError
from scale_alibi.contract.manifest import ManifestError, check_manifest
from scale_alibi.contract.names import LAYERS
from scale_alibi.contract.release import (
    MANIFEST_NAME,
    check_release_name,
    content_hash,
    manifest_metadata,
    read_manifest,
    resolves_inside,
    writable_release_dir,
    write_bytes_atomic,
)
from scale_alibi.contract.storage import STORE_TIMEOUTS, StoreTimeouts, is_remote, join, local_path, remote_filesystem

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

TileRead = Callable[[str, int, int, int], bytes]


def tile_path(release_path: str, layer: str, z: int, x: int, y: int) -> str:
    """The path (or object key) of tile (layer, z, x, y) of the release at `release_path`."""
    return f"{release_path.rstrip('/')}/{layout.tile_name(layer, z, x, y)}"


@dataclass(frozen=True)
class Manifest:
    """A release's manifest, read and checked: its rows, its metadata and the sha256 of its bytes."""

    table: pa.Table
    metadata: dict[str, object]
    sha256: str


def parse_manifest(raw: bytes, what: str) -> Manifest:
    """The manifest in `raw`, checked (`check_manifest`); ManifestError naming `what` if it is not one."""
    try:
        table = read_manifest(pa.BufferReader(raw))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ManifestError(f"the manifest of {what} cannot be read ({' '.join(str(exc).split())[:120]}); "
                            "rebuild the release with `curate build`") from None
    check_manifest(table, what)
    return Manifest(table, manifest_metadata(table), content_hash(raw))


class RangeArchive(Archive):
    """A PMTiles archive read by range requests, `fetch(offset, length)` (an object in a bucket):
    header and directories read as for a local archive, the file never downloaded whole."""

    def __init__(self, fetch: Callable[[int, int], bytes], name: str, size: int):
        self.fd = -1  # nothing to close
        self.name = name
        self.stat = None
        self.fetch = fetch
        self._load(size)

    def pread(self, offset: int, length: int) -> bytes:
        return self.fetch(offset, length)


class StoredRelease:
    """Release `name` under data root `root` (a directory or an fsspec URL), read-only but for
    `write`: what every command reads a release through."""

    def __init__(self, root: str | os.PathLike[str], name: str, timeouts: StoreTimeouts = STORE_TIMEOUTS):
        self.root = os.fspath(root)
        self.name = check_release_name(name)
        self.remote = is_remote(self.root)
        self.timeouts = timeouts  # how long a store request may wait (contract.storage)
        if self.remote:
            self.fs: AbstractFileSystem | None
            self.fs, base = remote_filesystem(self.root, timeouts)
            self.path = join(base, name)
        else:
            self.fs = None
            self.path = os.path.join(local_path(self.root), name)

    @property
    def location(self) -> str:
        """The release as the user named it, for messages."""
        return f"{self.root.rstrip('/')}/{self.name}"

    def __repr__(self) -> str:
        return f"StoredRelease({self.location!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # to worker processes: reopened there
        return StoredRelease, (self.root, self.name, self.timeouts)

    # ---- files

    def key(self, rel: str) -> str:
        """The path (or object key) of file `rel` ('/'-separated) of the release."""
        return join(self.path, rel) if self.remote else os.path.join(self.path, *rel.split("/"))

    def tile_key(self, layer: str, z: int, x: int, y: int) -> str:
        """The path (or object key) of tile (layer, z, x, y)."""
        return self.key(layout.tile_name(layer, z, x, y))

    def archive_key(self, layer: str) -> str:
        """The path (or object key) of the PMTiles archive of `layer`."""
        return self.key(layout.archive_name(layer))

    def read(self, rel: str) -> bytes | None:
        """The bytes of file `rel`, or None when it is missing (or, on disk, a link out of the release)."""
        if self.fs is not None:
            try:
                return self.fs.cat_file(self.key(rel))
            except FileNotFoundError:
                return None
        path = self.key(rel)
        if not resolves_inside(path, self.path):
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """`length` bytes of file `rel` from `offset` (fewer at its end)."""
        if self.fs is not None:
            return self.fs.cat_file(self.key(rel), start=offset, end=offset + length)
        with open(self.key(rel), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def is_dir(self, rel: str) -> bool:
        if self.fs is not None:
            return bool(self.fs.isdir(self.key(rel)))
        return os.path.isdir(self.key(rel))

    def is_file(self, rel: str) -> bool:
        if self.fs is not None:
            return bool(self.fs.isfile(self.key(rel)))
        return os.path.isfile(self.key(rel))

    def exists(self) -> bool:
        return self.is_dir("") if self.fs is None else bool(self.fs.exists(self.path))

    def is_finished(self) -> bool:
        """A release is finished once its manifest exists."""
        return self.is_file(MANIFEST_NAME)

    def write(self, rel: str, data: bytes) -> None:
        """Write file `rel` whole (atomically on disk; one PUT in a bucket)."""
        if self.fs is not None:
            self.fs.pipe_file(self.key(rel), data)
        else:
            write_bytes_atomic(Path(self.key(rel)), data)

    def check_writable(self) -> None:
        """UserError unless the release may be written: on disk, its directory and each layer directory
        resolve to their own place under the root (`writable_release_dir`); a bucket has no links."""
        if self.fs is None:
            writable_release_dir(local_path(self.root), self.name)

    def put(self, rel: str, local: Path) -> None:
        """Upload the finished local file `local` as file `rel` (one PUT: readers see all of it or none)."""
        assert self.fs is not None, "put is for releases in a bucket; a local file is written in place"
        self.fs.put_file(os.fspath(local), self.key(rel))

    # ---- the manifest

    def manifest(self) -> Manifest:
        """The manifest, read and checked; UserError when there is none, ManifestError when it lies."""
        raw = self.read(MANIFEST_NAME)
        if raw is None:
            raise UserError(f"no finished release {self.name!r} under {self.root} (no {MANIFEST_NAME}); check "
                            "--data and --release, or finish it with `curate build`")
        return parse_manifest(raw, f"release {self.name!r}")

    # ---- tiles

    def has_tree(self) -> bool:
        """Whether the release holds any layer of the XYZ tile tree (layout's rule)."""
        return layout.has_tree(self.is_dir)

    @cached_property
    def reads_archives(self) -> bool:
        """Whether tiles come from the PMTiles archives (no tree, all three archives): layout's rule."""
        if self.fs is None:
            return layout.reads_archives(self.is_dir, self.is_file)
        try:
            listing = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in
                       self.fs.ls(self.path, detail=True)}
        except FileNotFoundError:
            listing = {}
        return layout.reads_archives(lambda n: listing.get(n, {}).get("type") == "directory",
                                     lambda n: listing.get(n, {}).get("type") == "file")

    def archives(self) -> dict[str, Archive]:
        """The three layer archives, open (ArchiveError if one is not a readable archive)."""
        opened: dict[str, Archive] = {}
        for layer in LAYERS:
            key = self.archive_key(layer)
            if self.fs is not None:
                opened[layer] = RangeArchive(partial(self.read_range, layout.archive_name(layer)), key,
                                             int(self.fs.info(key)["size"]))
            elif not resolves_inside(key, self.path):
                raise ArchiveError(f"{key} links out of the release")
            else:
                opened[layer] = Archive.open(key)
        return opened

    def tiles(self) -> TileRead:
        """`read(layer, z, x, y)`: a tile's bytes from the tree or the archives; FileNotFoundError if missing."""
        if not self.reads_archives:
            def read_tree(layer: str, z: int, x: int, y: int) -> bytes:
                data = self.read(layout.tile_name(layer, z, x, y))
                if data is None:
                    raise FileNotFoundError(f"{self.location}: no tile {layout.tile_name(layer, z, x, y)}")
                return data

            return read_tree
        archives = self.archives()

        def read_archive(layer: str, z: int, x: int, y: int) -> bytes:
            data = archives[layer].read(z, x, y)
            if data is None:
                raise FileNotFoundError(f"{self.location}: no {layer} tile {z}/{x}/{y} in {layout.archive_name(layer)}")
            return data

        return read_archive
