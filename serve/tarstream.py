"""Tar (ustar) members built by hand, so a stream of samples needs no tarfile object or temp file."""

from __future__ import annotations

import tarfile

BLOCK = 512
END = b"\0" * (2 * BLOCK)  # two zero blocks end a tar archive


def member(name: str, data: bytes, mtime: int) -> list[bytes]:
    """Header, data and padding of one regular-file member (concatenate to get its tar bytes)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = "scale-alibi"
    header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    pad = -len(data) % BLOCK
    return [header, data, b"\0" * pad] if pad else [header, data]
