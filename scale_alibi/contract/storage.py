"""Where releases live: a local directory, or a prefix of an object store named by an fsspec URL
(``s3://bucket/prefix``, ``gs://...``, ``az://...``, ``memory://...``).

An object store has no rename and no fsync, but each PUT of a whole object is atomic: a reader
sees the old object, the new one or none, never half of one. The release contract holds there
because every file of a release is written in one PUT and the manifest, which is what makes a
release exist, is written last.

Credentials and endpoints come from the store library's own configuration (for S3: the standard
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` ...), so
a MinIO, Ceph or other S3-compatible store is `AWS_ENDPOINT_URL=http://host:9000`.

Every request to an S3 store has a connect and a read timeout and a bounded number of tries
(`StoreTimeouts`, set here and nowhere else): a store that accepts connections and never answers
costs at most about `attempts x read_s` seconds per call, never the library defaults' minutes.
"""

from __future__ import annotations

import functools
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# Libraries fsspec needs per protocol, named in the error when one is missing.
_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


@dataclass(frozen=True)
class StoreTimeouts:
    """How long one object-store request may wait to connect and for each read of its answer, and
    how many times in all it is tried (timeouts, 5xx and throttling are retried, with backoff)."""

    connect_s: float = 10.0
    read_s: float = 30.0
    attempts: int = 3

    @classmethod
    def waiting(cls, timeout_s: float, attempts: int = 3) -> StoreTimeouts:
        """Both timeouts `timeout_s` (a command's `--timeout`)."""
        return cls(connect_s=timeout_s, read_s=timeout_s, attempts=attempts)

    def describe(self) -> str:
        return f"no answer within {self.read_s:g} s, {self.attempts} tries"


# Commands that read or write a release (build, verify): a slow store is waited for, a silent one is not.
STORE_TIMEOUTS = StoreTimeouts()
# The server: a request waiting on a silent store is answered 503 within about attempts x read_s.
SERVE_STORE_TIMEOUTS = StoreTimeouts(connect_s=2.0, read_s=2.0, attempts=2)


def store_options(protocol: str, timeouts: StoreTimeouts) -> dict[str, object]:
    """fsspec options that put `timeouts` on every request of `protocol`'s store library."""
    if protocol in ("s3", "s3a"):
        # botocore does the retrying ("standard" mode: timeouts, 5xx, throttling; backoff with
        # jitter); s3fs's own retry loop is set to one pass (remote_filesystem), or the tries multiply.
        return {"config_kwargs": {"connect_timeout": timeouts.connect_s, "read_timeout": timeouts.read_s,
                                  "retries": {"mode": "standard", "total_max_attempts": timeouts.attempts}},
                "session": _s3_session()}
    return {}  # other stores: their library's own timeouts (docs/faults.md)


@functools.cache
def _s3_session() -> object:
    """An aiobotocore session whose PUTs send no `Expect: 100-continue`: aiohttp waits for the
    interim `100 Continue` with no timeout at all, so a silent store would hang every write.
    One per process, so that fsspec's instance cache (keyed by the options) keeps working."""
    from aiobotocore.session import AioSession
    from botocore.handlers import add_expect_header

    session = AioSession()
    session.unregister("before-call.s3", add_expect_header)
    return session


def store_failure(exc: BaseException) -> str:
    """What went wrong in a store call, on one line (the library's errors are not all OSErrors)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is an fsspec URL of a store other than the local disk (``file://`` is local)."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike[str]) -> Path:
    """The local path of a non-remote `location` (a path, or a ``file://`` URL)."""
    text = os.fspath(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def remote_filesystem(url: str, timeouts: StoreTimeouts = STORE_TIMEOUTS) -> tuple[AbstractFileSystem, str]:
    """(filesystem, root path inside it) for an fsspec URL, or a UserError saying what to install.

    Listings are never cached: a release that another process finishes must become visible.
    Every request waits at most as `timeouts` says (store_options)."""
    import fsspec

    from scale_alibi.contract.errors import UserError

    protocol = url.split("://", 1)[0]
    try:
        fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False, **store_options(protocol, timeouts))
    except (ImportError, ValueError) as e:
        package = _PROTOCOL_PACKAGES.get(protocol)
        hint = f"pip install {package}" if package else "install the fsspec implementation for it"
        raise UserError(f"cannot open {url}: no storage library for {protocol}:// ({str(e)[:120]}); {hint}") from None
    if store_options(protocol, timeouts):
        fs.retries = 1  # s3fs's loop around botocore's: botocore already tries `timeouts.attempts` times
    return fs, root.rstrip("/")


def join(root: str, *parts: str) -> str:
    """An object path below `root` (always '/'-separated, whatever the local OS uses)."""
    return posixpath.join(root, *parts)
