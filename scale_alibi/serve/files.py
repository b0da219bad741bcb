"""Immutable files over HTTP: safe reads, an in-memory LRU, and ETag / 304 / Range handling.

Everything here works on raw ASGI header lists (`list[tuple[bytes, bytes]]`) so that the fast
path and the FastAPI routes share one implementation. Bytes are served exactly as stored.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.release import is_below

# Releases are immutable: a tile's URL always names the same bytes.
CACHE_IMMUTABLE = b"public, max-age=31536000, immutable"
CORS = (b"access-control-allow-origin", b"*")
PNG = b"image/png"
JSON = b"application/json"
TAR = b"application/x-tar"


@dataclass(frozen=True)
class Blob:
    """One immutable response body with its strong ETag and its precomputed 200 headers."""

    body: bytes
    etag: bytes  # quoted, e.g. b'"<sha256>"'
    content_type: bytes
    headers: list[tuple[bytes, bytes]]

    @classmethod
    def make(cls, body: bytes, digest: str, content_type: bytes = PNG) -> Blob:
        """A blob whose ETag is the quoted content hash `digest`."""
        etag = b'"' + digest.encode("ascii") + b'"'
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"etag", etag),
            (b"cache-control", CACHE_IMMUTABLE),
            (b"accept-ranges", b"bytes"),
            CORS,
        ]
        return cls(body, etag, content_type, headers)


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """RFC 9110 weak comparison of an If-None-Match list against our ETag."""
    value = if_none_match.strip()
    if value == b"*":
        return True
    for candidate in value.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


class RangeNotSatisfiable(ScaleAlibiError):
    """The Range header asks for bytes the file does not have."""


def parse_range(value: bytes, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, None to ignore the header (RFC 9110 allows it)."""
    value = value.strip()
    if not value.lower().startswith(b"bytes=") or b"," in value:
        return None  # other units and multi-range: answer with the whole file
    spec = value[6:].strip()
    first, dash, last = spec.partition(b"-")
    # RFC 9110 positions are 1*DIGIT: int() would also take "1_0", "+1", " 1" or non-ASCII digits,
    # and a range the client did not write must not be honoured (an invalid one is ignored).
    if not dash or not _digits(last, empty_ok=True) or not _digits(first, empty_ok=bool(last)):
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size - 1
    a = int(first)
    b = int(last) if last else size - 1
    if a >= size:
        raise RangeNotSatisfiable
    if b < a:
        return None
    return a, min(b, size - 1)


def _digits(text: bytes, empty_ok: bool) -> bool:
    """Whether `text` is 1*DIGIT (ASCII only), or empty where `empty_ok`."""
    return (not text and empty_ok) or (text.isdigit() and text.isascii())


def conditional_response(
    blob: Blob, request_headers: list[tuple[bytes, bytes]]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) for a GET/HEAD of `blob`: 200, 206, 304 or 416."""
    inm = rng = if_range = None
    for name, value in request_headers:
        if name == b"if-none-match":
            inm = value
        elif name == b"range":
            rng = value
        elif name == b"if-range":
            if_range = value
    if inm is None and rng is None:
        return 200, blob.headers, blob.body
    if inm is not None and etag_matches(inm, blob.etag):
        return 304, [(b"etag", blob.etag), (b"cache-control", CACHE_IMMUTABLE), CORS], b""
    if rng is None or (if_range is not None and if_range.strip() != blob.etag):
        return 200, blob.headers, blob.body
    size = len(blob.body)
    try:
        span = parse_range(rng, size)
    except RangeNotSatisfiable:
        body = json.dumps({"detail": f"range not satisfiable: the file has {size} bytes"}).encode()
        headers = [
            (b"content-type", JSON),
            (b"content-length", str(len(body)).encode()),
            (b"content-range", f"bytes */{size}".encode()),
            CORS,
        ]
        return 416, headers, body
    if span is None:
        return 200, blob.headers, blob.body
    a, b = span
    part = blob.body[a : b + 1]
    headers = [
        (b"content-type", blob.content_type),
        (b"content-length", str(len(part)).encode()),
        (b"content-range", f"bytes {a}-{b}/{size}".encode()),
        (b"etag", blob.etag),
        (b"cache-control", CACHE_IMMUTABLE),
        (b"accept-ranges", b"bytes"),
        CORS,
    ]
    return 206, headers, part


class SafeReader:
    """Reads files only when they resolve inside the data directory (no `..`, no escaping symlinks)."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self._dir_ok: dict[str, bool] = {}  # directory -> resolves inside root (releases are immutable)

    def _dir_inside(self, directory: str) -> bool:
        ok = self._dir_ok.get(directory)
        if ok is None:
            ok = is_below(os.path.realpath(directory), self.root)
            if len(self._dir_ok) > 200_000:
                self._dir_ok.clear()
            self._dir_ok[directory] = ok
        return ok

    def open_fd(self, path: str) -> tuple[int, os.stat_result] | None:
        """(fd, stat) of regular file `path` opened for reading, or None when missing or outside the root."""
        # The directory as the text before the last "/" (os.path.dirname's generality cost a
        # shard stream ~1 us a file); a path directly under "/" goes through dirname.
        if not self._dir_inside(path.rpartition("/")[0] or os.path.dirname(path)):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                return None
            # The file itself is a symlink: follow it only if it stays inside the root.
            if not is_below(os.path.realpath(path), self.root):
                return None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd, st

    def read(self, path: str) -> tuple[bytes, os.stat_result] | None:
        """(bytes, stat) of regular file `path`, or None when it is missing or resolves outside the root."""
        opened = self.open_fd(path)
        if opened is None:
            return None
        with os.fdopen(opened[0], "rb") as f:
            return f.read(), opened[1]


class BlobCache:
    """A byte-bounded LRU of blobs; used from the event loop thread only (no lock needed there)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[str, Blob] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Blob | None:
        """The cached blob for `key`, marking it recently used."""
        blob = self._items.get(key)
        if blob is not None:
            self._items.move_to_end(key)
        return blob

    def put(self, key: str, blob: Blob) -> None:
        """Cache `blob` unless it alone exceeds an eighth of the budget; evict the least recently used."""
        n = len(blob.body)
        if n > self.max_bytes // 8:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old.body)
            self._items[key] = blob
            self.size += n
            while self.size > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self.size -= len(evicted.body)

    def drop_prefix(self, prefix: str) -> None:
        """Forget every blob whose key starts with `prefix` (a release whose manifest changed)."""
        with self._lock:
            for key in [k for k in self._items if k.startswith(prefix)]:
                self.size -= len(self._items.pop(key).body)

    def __len__(self) -> int:
        return len(self._items)
