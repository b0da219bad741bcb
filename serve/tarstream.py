"""Tar (ustar) members built by hand, so a stream of samples needs no tarfile object or temp file."""

from __future__ import annotations

import tarfile

BLOCK = 512
END = b"\0" * (2 * BLOCK)  # two zero blocks end a tar archive


def member(name: str, data: bytes, mtime: int) -> list[bytes]:
    """Header, data and padding of one regular-file member (concatenate to get its tar bytes)."""
    pad = -len(data) % BLOCK
    head = header(name, len(data), mtime)
    return [head, data, b"\0" * pad] if pad else [head, data]


def header(name: str, size: int, mtime: int) -> bytes:
    """The ustar header block of a regular file of `size` bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = "scale-alibi"
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def padded(size: int) -> int:
    """`size` rounded up to whole blocks."""
    return size + (-size % BLOCK)
