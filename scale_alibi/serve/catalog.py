"""The finished releases under a data root, each indexed once per process from its manifest.

The data root is a local directory or a bucket prefix (scale_alibi.serve.stores). Releases are
immutable once their manifest exists, so an index is built once and re-read only when the
manifest changes (its signature: mtime, size and inode on disk; ETag, size and modification time
in a bucket: a repaired or rebuilt release); a release that finishes after start-up is picked up
on a later look-up (scans are rate limited to one per RESCAN_SECONDS, and a bucket is scanned in
the background so that no request waits for a listing). Every file path or object key the server
reads is built from a release location found by listing and from integers found in a manifest:
never from request text."""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scale_alibi.contract.reader import parse_manifest
from scale_alibi.contract.release import (
    HIRES_CHILDREN,
    LAYERS,
    MANIFEST_NAME,
    STATS_NAME,
    TRIPLET_MEMBERS,
    is_release_name,
)
from scale_alibi.contract.tiles import tile_bounds

log = logging.getLogger(__name__)

MAX_PACKED_ZOOM = 29  # (z, x, y) pack into one int64: 5 + 29 + 29 bits
_HIRES_INDEX = {offset: i for i, offset in enumerate(HIRES_CHILDREN)}
MEMBERS = len(TRIPLET_MEMBERS)  # files per triplet (manifest row)


def pack_key(z: int, x: int, y: int) -> int:
    """One sortable int64 for a tile address (z <= MAX_PACKED_ZOOM)."""
    return (z << 58) | (x << 29) | y


class ReleaseFiles(ABC):
    """What the catalog reads of a data root: which releases have a manifest, and their small files
    (the stores of scale_alibi.serve.stores)."""

    # Listing costs network round trips: the catalog rescans in the background, off the request path.
    remote = False

    def __init__(self, location: str):
        self.location = location  # as the user gave it, for messages

    @abstractmethod
    def finished(self) -> Iterator[tuple[str, str, Hashable]]:
        """(name, location, manifest signature) of each entry under the root that has a manifest."""

    @abstractmethod
    def read_file(self, release: str, name: str) -> bytes | None:
        """The bytes of file `name` of the release at `release`, or None when it is missing (or unsafe)."""


@dataclass
class ReleaseIndex:
    """One finished release: its manifest table and the look-ups the endpoints need."""

    name: str
    path: str  # the release's real path inside the data directory, or its key prefix in the bucket
    store: ReleaseFiles  # where its files are read from
    table: pa.Table
    metadata: dict[str, object]
    keys: np.ndarray  # packed (z, x, y) of each manifest row, sorted
    row_keys: np.ndarray  # packed (z, x, y) of each manifest row, in manifest order
    order: np.ndarray  # manifest row of each sorted key
    split_rows: dict[str, np.ndarray]  # manifest rows of each split, in manifest (z, x, y) order
    zooms: list[int]
    bounds: list[float]  # west, south, east, north
    etag_seed: str  # sha256 of the manifest bytes: identifies the release's content
    _coverage: dict | None = field(default=None, repr=False)
    # Per file slot (manifest row * 7 + member, TRIPLET_MEMBERS order): the fast checksum
    # (scale_alibi.serve.integrity) of the bytes that last matched the manifest's sha256; 0: never matched.
    _verified: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def load(cls, name: str, path: str, store: ReleaseFiles) -> ReleaseIndex:
        """Read and index the manifest of the release at `path` of `store`."""
        raw = store.read_file(path, MANIFEST_NAME)
        if raw is None:
            raise ValueError(f"{MANIFEST_NAME} is gone or links out of the release")
        # Checked (columns, unique in-range rows, sha256 hashes, seal): a manifest that lies is not served.
        manifest = parse_manifest(raw, f"release {name!r}")
        # One chunk per column: a `take` of a shard's rows from a chunked table concatenates whole
        # columns first (46 ms per 32-row shard at 10^6 rows, measured), from one chunk it is O(rows).
        table = manifest.table.combine_chunks()
        z = table.column("z").to_numpy().astype(np.int64)
        x = table.column("x").to_numpy().astype(np.int64)
        y = table.column("y").to_numpy().astype(np.int64)
        keys = (z << 58) | (x << 29) | y
        order = np.argsort(keys, kind="stable")
        if len(keys) > 1 and not bool(np.all(np.diff(keys) > 0)):
            # Shard order and cursors are defined on (z, x, y) order; write_manifest sorts, others may not.
            table = table.take(pa.array(order))
            z, x, y, keys = z[order], x[order], y[order], keys[order]
            order = np.arange(len(keys))
        split = table.column("split")
        split_rows = {
            "all": np.arange(len(z)),
            "train": np.flatnonzero(pc.equal(split, "train").to_numpy(zero_copy_only=False)),
            "heldout": np.flatnonzero(pc.equal(split, "heldout").to_numpy(zero_copy_only=False)),
        }
        if len(z):
            b = tile_bounds(z, x, y)
            bounds = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]
        else:
            bounds = [-180.0, -85.0511, 180.0, 85.0511]
        return cls(
            name=name,
            path=path,
            store=store,
            table=table,
            metadata=manifest.metadata,
            keys=keys[order],
            row_keys=keys,
            order=order,
            split_rows=split_rows,
            zooms=sorted({int(v) for v in np.unique(z)}),
            bounds=bounds,
            etag_seed=manifest.sha256,
        )

    def stats(self) -> dict | None:
        """The release's `curate stats` document, read at each call (a new one is served at once);
        None when there is none, or when it is a link out of the release. ValueError if corrupt."""
        raw = self.store.read_file(self.path, STATS_NAME)
        return None if raw is None else json.loads(raw)  # json.JSONDecodeError is a ValueError

    @property
    def triplets(self) -> int:
        return self.table.num_rows

    def row_of(self, z: int, x: int, y: int) -> int | None:
        """The manifest row of triplet (z, x, y), or None."""
        if not (0 <= z <= MAX_PACKED_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z):
            return None
        key = pack_key(z, x, y)
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and int(self.keys[i]) == key:
            return int(self.order[i])
        return None

    def tile_ref(self, layer: str, z: int, x: int, y: int) -> tuple[str, int] | None:
        """(the manifest's sha256, file slot) of tile (layer, z, x, y), or None when the manifest lacks it."""
        if layer not in LAYERS:
            return None
        row = self.row_of(z, x, y)
        if row is not None:
            return self.table.column(f"hash_{layer}")[row].as_py(), row * MEMBERS + LAYERS.index(layer)
        if layer == "naip" and z >= 1:
            # NAIP also exists one zoom deeper: the four children of each triplet.
            parent = self.row_of(z - 1, x >> 1, y >> 1)
            if parent is not None:
                i = _HIRES_INDEX[(x & 1, y & 1)]
                return self.table.column("hash_naip_hires")[parent][i].as_py(), parent * MEMBERS + len(LAYERS) + i
        return None

    def verified_checksum(self, slot: int) -> int:
        """The checksum of the bytes of file `slot` that last matched the manifest's sha256 (0: none yet)."""
        return 0 if self._verified is None else int(self._verified[slot])

    def verified_checksums(self, row: int) -> list[int]:
        """`verified_checksum` of each file of manifest row `row`, in TRIPLET_MEMBERS order."""
        if self._verified is None:
            return [0] * MEMBERS
        return self._verified[row * MEMBERS : (row + 1) * MEMBERS].tolist()

    def remember_verified(self, slot: int, checksum: int) -> None:
        """Record that bytes with `checksum` (non-zero) in file `slot` matched the manifest's sha256."""
        if self._verified is None:
            self._verified = np.zeros(self.table.num_rows * MEMBERS, dtype=np.uint64)
        self._verified[slot] = checksum

    def rows(self, rows: np.ndarray | list[int]) -> list[dict]:
        """Manifest rows as JSON-ready dicts."""
        return self.table.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def layer_zooms(self, layer: str) -> tuple[int, int]:
        """(minzoom, maxzoom) at which a layer has tiles: NAIP also one zoom deeper."""
        lo, hi = (self.zooms[0], self.zooms[-1]) if self.zooms else (0, 0)
        return (lo, hi + 1) if layer == "naip" else (lo, hi)

    def coverage(self) -> dict:
        """A GeoJSON FeatureCollection: one polygon per triplet footprint (computed once)."""
        if self._coverage is None:
            z, x, y = (self.table.column(c).to_numpy().astype(np.int64) for c in ("z", "x", "y"))
            b = tile_bounds(z, x, y)
            split = self.table.column("split").to_pylist()
            features = [
                {
                    "type": "Feature",
                    "properties": {"z": int(zi), "x": int(xi), "y": int(yi), "split": s},
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [[[w, so], [e, so], [e, n], [w, n], [w, so]]],
                    },
                }
                for zi, xi, yi, s, (w, so, e, n) in zip(z, x, y, split, b.round(7).tolist())
            ]
            self._coverage = {"type": "FeatureCollection", "features": features}
        return self._coverage

    def summary(self) -> dict:
        """What `/releases` says about this release."""
        w, s, e, n = self.bounds
        zc = self.zooms[-1] if self.zooms else 0
        return {
            "name": self.name,
            "triplets": self.triplets,
            "splits": {k: int(len(v)) for k, v in self.split_rows.items() if k != "all"},
            "zooms": self.zooms,
            "layers": {layer: dict(zip(("minzoom", "maxzoom"), self.layer_zooms(layer))) for layer in LAYERS},
            "bounds": self.bounds,
            "center": [(w + e) / 2, (s + n) / 2, zc],
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Survey:
    """What one look at the data root found (see Catalog._survey)."""

    signatures: dict[str, object]
    loaded: dict[str, ReleaseIndex | None]


class Catalog:
    """The finished releases under one data root (a directory or a bucket prefix), looked up by name."""

    RESCAN_SECONDS = 2.0

    def __init__(self, store: ReleaseFiles):
        self.store = store
        self._releases: dict[str, ReleaseIndex] = {}
        self._signatures: dict[str, object] = {}  # name -> manifest signature when last read (good or bad)
        self._refused_names: set[str] = set()  # directories whose names are not release names
        self._lock = threading.Lock()
        self._scanned = 0.0
        self._surveying = False  # a background survey of a bucket is running
        self._surveyed: Survey | None = None  # its result, applied by the next look-up
        self.on_change: list = []  # callables(name) told when a served release is re-read or withdrawn
        self.rescan(force=True)

    def rescan(self, force: bool = False) -> None:
        """Index releases that finished, and re-read manifests that changed (e.g. one that was corrupt
        and got repaired), since the last scan; rate limited unless forced. A bucket is surveyed in a
        background thread unless forced, and what it found is applied here, by the look-up after it:
        the served state only ever changes on the thread that looks up."""
        surveyed, self._surveyed = self._surveyed, None
        if surveyed is not None:
            with self._lock:
                self._apply(surveyed)
        now = time.monotonic()
        if not force and now - self._scanned < self.RESCAN_SECONDS:
            return
        self._scanned = now
        if force or not self.store.remote:
            with self._lock:
                self._apply(self._survey())
        elif not self._surveying:
            self._surveying = True
            threading.Thread(target=self._survey_in_background, name="catalog-survey", daemon=True).start()

    def _survey_in_background(self) -> None:
        try:
            self._surveyed = self._survey()
        except Exception as exc:  # a store that is briefly unreachable: keep serving what is known
            log.error("could not list releases under %s (%s); serving the releases listed before",
                      self.store.location, exc)
        finally:
            self._surveying = False

    def _survey(self) -> Survey:
        """The manifest signature of every finished release, and a new index (None: broken) of each
        whose manifest changed since it was last read."""
        signatures: dict[str, object] = {}
        loaded: dict[str, ReleaseIndex | None] = {}
        for name, path, signature in self.store.finished():
            if not is_release_name(name):
                if name not in self._refused_names:  # said once, not on every scan
                    log.error("release %r not served: its name is not a release name (letters, digits, -_.)", name)
                    self._refused_names.add(name)
                continue
            signatures[name] = signature
            if self._signatures.get(name) == signature:
                continue  # unchanged since it was read (served, or refused as broken)
            try:
                loaded[name] = ReleaseIndex.load(name, path, self.store)
            except Exception as exc:  # a broken manifest must not take the server down
                log.error("release %s not served: %s", name, exc)
                loaded[name] = None
        return Survey(signatures, loaded)

    def _apply(self, survey: Survey) -> None:
        for name, index in survey.loaded.items():
            if index is None:
                self._withdraw(name)
                continue
            replaced = name in self._releases
            self._releases[name] = index
            if replaced:
                self._notify(name)
        for name in [n for n in self._signatures if n not in survey.signatures]:
            self._withdraw(name)
        self._signatures = survey.signatures

    def _withdraw(self, name: str) -> None:
        if self._releases.pop(name, None) is not None:
            self._notify(name)

    def _notify(self, name: str) -> None:
        for callback in self.on_change:
            callback(name)

    def names(self) -> list[str]:
        """Names of the finished releases, sorted."""
        self.rescan()
        return sorted(self._releases)

    def get(self, name: str) -> ReleaseIndex | None:
        """A finished release by name (as its manifest is now, within RESCAN_SECONDS), or None."""
        self.rescan()
        return self._releases.get(name)
