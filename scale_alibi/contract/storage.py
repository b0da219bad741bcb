"""Where releases live: a local directory, or a prefix of an object store named by an fsspec URL
(``s3://bucket/prefix``, ``gs://...``, ``az://...``, ``memory://...``).

An object store has no rename and no fsync, but each PUT of a whole object is atomic: a reader
sees the old object, the new one or none, never half of one. The release contract holds there
because every file of a release is written in one PUT and the manifest, which is what makes a
release exist, is written last.

Credentials and endpoints come from the store library's own configuration (for S3: the standard
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` ...), so
a MinIO, Ceph or other S3-compatible store is `AWS_ENDPOINT_URL=http://host:9000`.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# Libraries fsspec needs per protocol, named in the error when one is missing.
_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is an fsspec URL of a store other than the local disk (``file://`` is local)."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | os.PathLike[str]) -> Path:
    """The local path of a non-remote `location` (a path, or a ``file://`` URL)."""
    text = os.fspath(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def remote_filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """(filesystem, root path inside it) for an fsspec URL, or a UserError saying what to install.

    Listings are never cached: a release that another process finishes must become visible."""
    import fsspec

    from scale_alibi.contract.errors import UserError

    protocol = url.split("://", 1)[0]
    try:
        fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False)
    except (ImportError, ValueError) as e:
        package = _PROTOCOL_PACKAGES.get(protocol)
        hint = f"pip install {package}" if package else "install the fsspec implementation for it"
        raise UserError(f"cannot open {url}: no storage library for {protocol}:// ({str(e)[:120]}); {hint}") from None
    return fs, root.rstrip("/")


def join(root: str, *parts: str) -> str:
    """An object path below `root` (always '/'-separated, whatever the local OS uses)."""
    return posixpath.join(root, *parts)
