"""A release directory: a public contract shared by `curate build` (writer), `serve` and the loader.

Layout (the paper's, standard XYZ so any web map can show a layer directly; written once, in
`scale_alibi.contract.layout`)::

    OUT/<release>/<layer>/<z>/<x>/<y>.png      layer in s1, s2, naip; naip also at z+1
    OUT/<release>/manifest.parquet             one row per complete triplet; written last
    OUT/<release>/<layer>.pmtiles              optional: the layer as one PMTiles archive
                                               (`curate pack`); serves a release without the tree

A release without ``manifest.parquet`` is unfinished: it is never served or trained on. This module
holds the local `Release`, manifest writing (sealed: `scale_alibi.contract.manifest`), durable file
writes, the write guard (`writable_release_dir`) and the shard order; reading a release anywhere
(a directory or a bucket) is `scale_alibi.contract.reader`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scale_alibi.contract import layout
from scale_alibi.contract.layout import tile_name
from scale_alibi.contract.manifest import MANIFEST_SCHEMA_VERSION as MANIFEST_SCHEMA_VERSION
from scale_alibi.contract.manifest import REQUIRED_COLUMNS, RowsDigest
from scale_alibi.contract.manifest import SPLITS as SPLITS
from scale_alibi.contract.names import ATTRIBUTION as ATTRIBUTION
from scale_alibi.contract.names import CHANNELS as CHANNELS
from scale_alibi.contract.names import HIRES_CHILDREN as HIRES_CHILDREN
from scale_alibi.contract.names import HIRES_NAMES as HIRES_NAMES
from scale_alibi.contract.names import LAYERS as LAYERS
from scale_alibi.contract.names import MODALITIES as MODALITIES
from scale_alibi.contract.names import TRIPLET_MEMBERS as TRIPLET_MEMBERS
from scale_alibi.contract.names import triplet_tiles as triplet_tiles

MANIFEST_NAME = "manifest.parquet"
STATS_NAME = "stats.json"  # `curate stats`: per-channel mean/std beside the manifest

MAX_RELEASE_NAME = 100
_RELEASE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def is_release_name(name: object) -> bool:
    """Whether `name` is a release name: letters, digits, ``-_.``, no leading dot, at most 100 characters."""
    return isinstance(name, str) and len(name) <= MAX_RELEASE_NAME and bool(_RELEASE_NAME.fullmatch(name))


def check_release_name(name: str) -> str:
    """Return `name` if `is_release_name`, else raise UserError: a release is one directory under
    the data root, never a path, and its name travels in URLs and shard member names."""
    from scale_alibi.contract.errors import UserError

    if not is_release_name(name):
        shown = repr(name) if len(repr(name)) <= 60 else f"{repr(name)[:60]}... ({len(str(name))} characters)"
        raise UserError(f"release name {shown} is not allowed; use 1-{MAX_RELEASE_NAME} letters, digits, "
                        "'-', '_' or '.', not starting with '.'")
    return name


def is_below(real_path: str, real_root: str) -> bool:
    """Whether the resolved path `real_path` lies strictly below the resolved directory `real_root`
    (for callers that resolved both already: `resolves_inside` resolves them)."""
    return real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def resolves_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when `path`, with every symlink resolved, lies strictly below `root` (also resolved)."""
    return is_below(os.path.realpath(path), os.path.realpath(root))


def writable_release_dir(root: str | os.PathLike[str], name: str) -> Path:
    """`root/name`, the release directory a command is about to write into, once proven to be its
    own. UserError when the directory itself is a link (it must resolve to exactly its place below
    `root`), or when a layer directory in it resolves outside `root` or into another finished
    release (a directory of `root` with a manifest), whose files a write would replace. The one
    guard of every command that writes a release (build, pack, stats, import-pmtiles, verify --repair)."""
    from scale_alibi.contract.errors import UserError

    def refuse(entry: Path, why: str) -> UserError:
        return UserError(f"refusing to write release {name!r}: {entry} resolves outside {why} (to "
                         f"{os.path.realpath(entry)}); remove the link or choose another output directory")

    release = Path(root) / check_release_name(name)
    real_root = os.path.realpath(root)
    own = os.path.join(real_root, name)
    if os.path.lexists(release) and os.path.realpath(release) != own:
        raise refuse(release, f"its own place {own} (a link out of the root or into another release)")
    for layer in LAYERS:
        entry = release / layer
        if not os.path.lexists(entry):
            continue
        real = os.path.realpath(entry)
        if not is_below(real, real_root):
            raise refuse(entry, f"the output directory {real_root}")
        top = os.path.join(real_root, os.path.relpath(real, real_root).split(os.sep, 1)[0])
        if top != own and os.path.isfile(os.path.join(top, MANIFEST_NAME)):
            raise refuse(entry, f"release {name!r}: into the release {os.path.basename(top)!r}")
    return release


def confine(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """`path`, once proven to resolve (symlinks followed) strictly inside `root` (a release or output
    directory); UserError if not: nothing is written or deleted where a planted link sends it."""
    from scale_alibi.contract.errors import UserError

    if not resolves_inside(path, root):
        raise UserError(f"refusing to write {path}: it resolves outside {root} (to {os.path.realpath(path)}); "
                        "remove the link or choose another output directory")
    return Path(path)


def content_hash(data: bytes) -> str:
    """The content hash recorded in the manifest and used as the HTTP ETag."""
    return hashlib.sha256(data).hexdigest()


FSYNC_THREADS = 8  # fsyncs in flight at once: the disk and the journal commit them together


def fsync_paths(paths: Iterable[Path]) -> None:
    """Make each file's bytes, or each directory's entries, durable (fsync), several at a time
    (one after another, each waits for its own disk flush: hundreds of them per metatile)."""
    paths = list(paths)
    if len(paths) <= 1:
        for p in paths:
            fsync_path(p)
        return
    with ThreadPoolExecutor(min(FSYNC_THREADS, len(paths))) as pool:
        list(pool.map(fsync_path, paths))


def fsync_path(path: Path) -> None:
    """fsync the file or directory at `path` (a directory's: the entries created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `path` whole or not at all, and survives a power loss
    once the block has ended without error (temp + fsync + rename + fsync of the directory). The
    file gets the umask's mode, like any file `open` creates (tempfile.mkstemp would force 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through `atomic_file`: readers see nothing or the whole, durable file."""
    with atomic_file(path) as f:
        f.write(data)


@dataclass(frozen=True)
class Release:
    """A named release under a data root: paths to its tiles and its manifest."""

    root: Path
    name: str

    @property
    def path(self) -> Path:
        return Path(self.root) / self.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def is_finished(self) -> bool:
        """A release is finished (servable) once its manifest exists."""
        return self.manifest_path.is_file()

    def tile_path(self, layer: str, z: int, x: int, y: int) -> Path:
        return self.path / tile_name(layer, z, x, y)

    def archive_path(self, layer: str) -> Path:
        """The PMTiles archive of `layer` beside the manifest."""
        return self.path / layout.archive_name(layer)

    @property
    def has_tree(self) -> bool:
        """Whether the release directory holds any layer of the XYZ tile tree (which then takes precedence)."""
        return layout.has_tree(lambda name: (self.path / name).is_dir())

    def triplet_paths(self, z: int, x: int, y: int) -> dict[str, Path]:
        """Every file of the triplet at (z, x, y), keyed by its member name (TRIPLET_MEMBERS)."""
        return {name: self.tile_path(*tile) for name, tile in triplet_tiles(z, x, y)}

    def read_manifest(self) -> pa.Table:
        return read_manifest(self.manifest_path)


HASH_COLUMNS: tuple[str, ...] = ("z", "x", "y", "hash_s1", "hash_s2", "hash_naip", "hash_naip_hires")


def triplet_files(row: dict) -> list[tuple[str, str]]:
    """(path relative to the release, sha256) of every file of a manifest row, in TRIPLET_MEMBERS order."""
    z, x, y = int(row["z"]), int(row["x"]), int(row["y"])
    out = [(tile_name(layer, z, x, y), row[f"hash_{layer}"]) for layer in LAYERS]
    for (dx, dy), digest in zip(HIRES_CHILDREN, row["hash_naip_hires"]):
        out.append((tile_name("naip", z + 1, 2 * x + dx, 2 * y + dy), digest))
    return out


def write_manifest(table: pa.Table, path: Path, metadata: dict[str, object]) -> None:
    """Validate and atomically write a manifest; `metadata` is stored as JSON in the file's key-value metadata."""
    write_bytes_atomic(Path(path), manifest_bytes(table, metadata))


MANIFEST_ROW_GROUP = 65_536  # rows per Parquet row group: few groups for a reader, bounded memory for a writer


def manifest_schema(schema: pa.Schema, metadata: dict[str, object]) -> pa.Schema:
    """`schema` checked for the REQUIRED_COLUMNS, with `metadata` as JSON in its key-value metadata."""
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"manifest lacks required columns {missing}")
    kv = dict(schema.metadata or {})
    kv[b"scale_alibi"] = json.dumps(metadata, sort_keys=True, default=str).encode()
    return schema.with_metadata(kv)


def write_manifest_batches(sink: BinaryIO, batches: Iterable[pa.Table], schema: pa.Schema,
                           metadata: dict[str, object]) -> int:
    """Write a manifest to `sink` from `batches` that come in (z, x, y) order (checked: a manifest is
    sorted); memory is one row group, not the whole manifest. Returns the number of rows."""
    schema = manifest_schema(schema, metadata)
    rows, last = 0, None
    digest = RowsDigest()
    pending: list[pa.Table] = []
    with pq.ParquetWriter(sink, schema) as writer:
        def flush() -> None:
            if pending:
                writer.write_table(pa.concat_tables(pending).replace_schema_metadata(schema.metadata))
                pending.clear()

        for batch in batches:
            if batch.num_rows == 0:
                continue
            keys = list(zip(*(batch.column(c).to_pylist() for c in ("z", "x", "y"))))
            if last is not None:
                keys.insert(0, last)
            if any(a >= b for a, b in zip(keys, keys[1:])):
                raise ValueError("manifest batches are not in strictly increasing (z, x, y) order")
            last = keys[-1]
            pending.append(batch)
            digest.update(batch)
            rows += batch.num_rows
            if sum(t.num_rows for t in pending) >= MANIFEST_ROW_GROUP:
                flush()
        flush()
        writer.add_key_value_metadata(digest.seal())  # in the footer, written after every row
    return rows


def manifest_bytes(table: pa.Table, metadata: dict[str, object]) -> bytes:
    """A validated manifest as Parquet bytes: rows sorted by (z, x, y), `metadata` as JSON in its key-value metadata."""
    table = table.sort_by([("z", "ascending"), ("x", "ascending"), ("y", "ascending")])
    sink = io.BytesIO()
    write_manifest_batches(sink, [table], table.schema, metadata)
    return sink.getvalue()


def read_manifest(path: Path | pa.NativeFile) -> pa.Table:
    """Read a manifest written by `write_manifest` (from a path, or from its bytes in a pa.BufferReader),
    with its footer's key-value metadata (the seal among it) as the schema's metadata."""
    return pq.ParquetFile(path if isinstance(path, pa.NativeFile) else os.fspath(path)).read()


def manifest_metadata(table: pa.Table) -> dict[str, object]:
    """The JSON metadata stored with a manifest (release, zoom, versions, item `updated` times, ...)."""
    raw = (table.schema.metadata or {}).get(b"scale_alibi")
    return json.loads(raw) if raw else {}


def list_releases(root: Path) -> Iterator[Release]:
    """Finished releases under a data root, by name."""
    root = Path(root)
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        release = Release(root, child.name)
        if release.is_finished:
            yield release


# ---- training-shard order: shared by the server (which cuts shards) and the loader (which asks) ----

@functools.lru_cache(maxsize=2)
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The deterministic order of a release's n manifest rows in one (seed, epoch); read-only.

    Kept for the last two (n, seed, epoch): every shard of an epoch slices the same permutation,
    which costs 22 ms to draw for 750,000 rows and 281 ms for 9 million (CONUS z15) and would
    otherwise be drawn again for every shard request (8 bytes per row held per cached epoch)."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    order.setflags(write=False)
    return order


def shard_count(n: int, shard_size: int) -> int:
    """How many shards of `shard_size` triplets cover n rows (the last may be short)."""
    return -(-n // shard_size)


def shard_rows(n: int, seed: int, epoch: int, shard_size: int, index: int) -> np.ndarray:
    """Manifest row indices of shard `index` in epoch order: the slice [index*size, (index+1)*size)."""
    if not 0 <= index < shard_count(n, shard_size):
        raise IndexError(f"shard {index} out of range for {n} rows in shards of {shard_size}")
    return epoch_permutation(n, seed, epoch)[index * shard_size : (index + 1) * shard_size]
