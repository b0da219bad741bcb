"""Releases in an object store (``s3://bucket/prefix``, or any fsspec URL): the layout of a data
directory, one object per file (scale_alibi.contract.release); a release's tiles come from its
tree or, when it has none, from its PMTiles archives read by range.

Each tile read is one GET. Its bytes are checked against the manifest's sha256 at every fetch (an
object can be replaced without a trace here), and the tiles of a shard batch are fetched
concurrently on a bounded thread pool. Object keys are built from a release name found by listing
and from integers in its manifest (StoredRelease.tile_key), never from request text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from scale_alibi.contract.archive import ArchiveError
from scale_alibi.contract.reader import RangeArchive, StoredRelease
from scale_alibi.contract.release import LAYERS, MANIFEST_NAME
from scale_alibi.contract.storage import SERVE_STORE_TIMEOUTS, join, remote_filesystem
from scale_alibi.serve.catalog import ReleaseIndex
from scale_alibi.serve.stores import ReleaseStore, StoreUnavailable
from scale_alibi.serve.tilesource import FetchedSpan, TileSource, TileSpan, find_in_archive

log = logging.getLogger(__name__)

FETCH_THREADS = 32  # GETs in flight per server process, all requests together
BATCH_TRIPLETS = 8  # triplets per shard batch: 56 GETs in flight for one shard

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

T = TypeVar("T")


def fetch_pool() -> ThreadPoolExecutor:
    """The process's pool of fetching threads (made on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="bucket-fetch")
        return _pool


def basename(entry: dict) -> str:
    """The last part of the path of a listing entry (a "directory" or an object)."""
    return entry["name"].rstrip("/").rsplit("/", 1)[-1]


class BucketStore(ReleaseStore):
    """Releases under a prefix of an object store; credentials and endpoint come from the environment."""

    remote = True

    def __init__(self, url: str):
        super().__init__(url.rstrip("/"))
        # UserError naming the package when the library is missing; requests wait a few seconds at most,
        # so a silent store is a 503 soon rather than a request held for minutes.
        self.fs, self.root = remote_filesystem(url, SERVE_STORE_TIMEOUTS)

    def _call(self, what: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`what(*args, **kwargs)`, with every failure but a missing object (FileNotFoundError) as StoreUnavailable."""
        try:
            return what(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # botocore's errors are not OSErrors: catch what the library raises
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise StoreUnavailable(
                f"cannot read {self.location} ({reason}); check the store's endpoint and credentials "
                "(for S3: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None

    def _entries(self) -> list[dict]:
        """The listing of the prefix; [] for a prefix with nothing under it yet, FileNotFoundError
        (with a message that says so) when the bucket itself does not exist."""
        try:
            return self._call(self.fs.ls, self.root, detail=True)
        except FileNotFoundError:
            bucket = self.root.split("/", 1)[0]
            try:
                self._call(self.fs.info, bucket)
            except FileNotFoundError:
                raise FileNotFoundError(f"bucket {bucket!r} of {self.location} does not exist; create it, "
                                        "or point --data at an existing one") from None
            return []

    def finished(self) -> Iterator[tuple[str, str, Hashable]]:
        for entry in self._entries():
            name = basename(entry)
            if entry.get("type") != "directory" or name.startswith("."):
                continue
            path = join(self.root, name)
            try:
                info = self._call(self.fs.info, join(path, MANIFEST_NAME))
            except FileNotFoundError:
                continue  # unfinished: no manifest yet
            # What changes when the object is rewritten, whatever the store calls it.
            version = info.get("ETag") or info.get("etag") or info.get("md5Hash")
            modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
            yield name, path, (version, info.get("size"), str(modified))

    def read_file(self, release: str, name: str) -> bytes | None:
        return self.fetch(join(release, name))

    def tile_source(self, index: ReleaseIndex) -> TileSource:
        """The release's tree, or its three PMTiles archives read by range (the reader's rule,
        scale_alibi.contract.reader), or its (absent) tree: every tile a 404."""
        release = StoredRelease(self.location, index.name, SERVE_STORE_TIMEOUTS)
        try:
            from_archives = self._call(lambda: release.reads_archives)
        except FileNotFoundError:
            from_archives = False  # deleted since it was listed
        if from_archives:
            archives: dict[str, BucketArchive] = {}
            for layer in LAYERS:
                try:
                    archives[layer] = BucketArchive(self, release.archive_key(layer))
                except (ArchiveError, FileNotFoundError) as exc:  # only this layer: the others keep serving
                    log.error("release %s: %s; its %s tiles are not served", index.name, exc, layer)
            return ArchiveSource(archives)
        return TreeSource(self, release)

    def fetch(self, key: str, start: int | None = None, end: int | None = None) -> bytes | None:
        """The bytes of object `key` (bytes start..end-1 of it, when given), or None when there is no such object."""
        try:
            return self._call(self.fs.cat_file, key, start=start, end=end)
        except FileNotFoundError:
            return None


class BucketArchive(RangeArchive):
    """A PMTiles archive that is an object in the bucket: header, directories and tiles read by range
    requests through the store (directories cached as for a local archive), never downloaded whole."""

    def __init__(self, store: BucketStore, key: str):
        super().__init__(lambda offset, length: store.fetch(key, offset, offset + length) or b"", key,
                         int(store._call(store.fs.info, key)["size"]))


class FetchingSource(TileSource):
    """A source whose tiles each cost a request: a batch's tiles are fetched concurrently."""

    batch_triplets = BATCH_TRIPLETS
    batch_bytes = None  # a fixed count: the GETs in flight, whatever the tiles weigh

    def locate_many(self, tiles: list[tuple[str, int, int, int]]) -> list[TileSpan | None]:
        # Fetched spans hold nothing open: a failure leaves nothing to close.
        return list(fetch_pool().map(lambda tile: self.locate(*tile), tiles))


class TreeSource(FetchingSource):
    """Tiles as objects of the release's tree in the bucket, one GET each."""

    def __init__(self, store: BucketStore, release: StoredRelease):
        self.store = store
        self.release = release

    def locate(self, layer: str, z: int, x: int, y: int) -> TileSpan | None:
        data = self.store.fetch(self.release.tile_key(layer, z, x, y))
        return None if data is None else FetchedSpan(data)


class ArchiveSource(FetchingSource):
    """Tiles as byte ranges of the release's PMTiles archives in the bucket, one range GET each
    (plus one per leaf directory not yet cached)."""

    def __init__(self, archives: dict[str, BucketArchive]):
        self.archives = archives

    def locate(self, layer: str, z: int, x: int, y: int) -> TileSpan | None:
        hit = find_in_archive(self.archives, layer, z, x, y)
        if hit is None:
            return None
        archive, (offset, size) = hit
        data = archive.pread(offset, size)
        return FetchedSpan(data) if len(data) == size else None
