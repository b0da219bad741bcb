"""Releases in an object store (``s3://bucket/prefix``, or any fsspec URL): the layout of a data
directory, one object per file (scale_alibi.contract.release).

Each tile read is one GET. Its bytes are checked against the manifest's sha256 at every fetch (an
object can be replaced without a trace here), and the tiles of a shard batch are fetched
concurrently on a bounded thread pool. Object keys are built from a release name found by listing
and from integers in its manifest (ReleaseIndex.tile_path), never from request text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from scale_alibi.contract.release import MANIFEST_NAME
from scale_alibi.contract.storage import join, remote_filesystem
from scale_alibi.serve.catalog import ReleaseIndex
from scale_alibi.serve.stores import ReleaseStore, StoreUnavailable
from scale_alibi.serve.tilesource import FetchedSpan, TileSource, TileSpan

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


class BucketStore(ReleaseStore):
    """Releases under a prefix of an object store; credentials and endpoint come from the environment."""

    remote = True

    def __init__(self, url: str):
        super().__init__(url.rstrip("/"))
        self.fs, self.root = remote_filesystem(url)  # UserError naming the package when the library is missing

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
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
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
        return BucketSource(self, index)

    def fetch(self, key: str) -> bytes | None:
        """The bytes of object `key`, or None when there is no such object."""
        try:
            return self._call(self.fs.cat_file, key)
        except FileNotFoundError:
            return None


class BucketSource(TileSource):
    """Tiles as objects of the release's tree in the bucket, one GET each."""

    batch_triplets = BATCH_TRIPLETS

    def __init__(self, store: BucketStore, index: ReleaseIndex):
        self.store = store
        self.index = index

    def locate(self, layer: str, z: int, x: int, y: int) -> TileSpan | None:
        data = self.store.fetch(self.index.tile_path(layer, z, x, y))
        return None if data is None else FetchedSpan(data)

    def locate_many(self, tiles: list[tuple[str, int, int, int]]) -> list[TileSpan | None]:
        # Fetched spans hold nothing open: a failure leaves nothing to close.
        return list(fetch_pool().map(lambda tile: self.locate(*tile), tiles))
