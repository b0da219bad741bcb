"""Triplets as tar members: the seven PNGs (bytes as stored) and the manifest row as JSON.

Members are packed straight into one preallocated buffer: each file is read once, from the page
cache into its place in the tar (no intermediate bytes objects, no join).
"""

from __future__ import annotations

import json
import os

from curate.release import triplet_files
from serve import tarstream
from serve.catalog import MEMBERS, ReleaseIndex
from serve.files import SafeReader
from serve.integrity import ensure_intact


class MissingFile(Exception):
    """A file the manifest lists is missing on disk or resolves outside the data directory."""


def row_json(row: dict) -> bytes:
    """A manifest row as compact, key-sorted JSON."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()


def pack_samples(
    index: ReleaseIndex, reader: SafeReader, samples: list[tuple[int, dict, str]], metadata_name: str,
    end: bool = False,
) -> bytearray:
    """Tar bytes of triplets given as (manifest row, metadata with z/x/y, member prefix): PNGs, then metadata."""
    # (member name, fd or bytes, size, (sha256, file slot, stat, description) of a file or None)
    plan: list[tuple[str, int | bytes, int, tuple | None]] = []
    try:
        for row, metadata, prefix in samples:
            z, x, y = int(metadata["z"]), int(metadata["x"]), int(metadata["y"])
            digests = [digest for _, digest in triplet_files(metadata)]
            for i, ((name, path), digest) in enumerate(zip(index.files_at(z, x, y), digests)):
                opened = reader.open_fd(path)
                if opened is None:
                    raise MissingFile(f"{index.name}: {name} of row {row} is not readable")
                fd, st = opened
                check = (digest, row * MEMBERS + i, st, f"{name} of {z}/{x}/{y}")
                plan.append((f"{prefix}{name}.png", fd, st.st_size, check))
            meta = row_json(metadata)
            plan.append((f"{prefix}{metadata_name}", meta, len(meta), None))
        total = sum(tarstream.BLOCK + tarstream.padded(size) for _, _, size, _ in plan)
        buf = bytearray(total + (len(tarstream.END) if end else 0))  # zeroed: padding and end blocks for free
        view = memoryview(buf)
        off = 0
        for name, source, size, check in plan:
            head = tarstream.header(name, size, index.mtime)
            view[off : off + len(head)] = head
            off += len(head)
            if isinstance(source, bytes):
                view[off : off + size] = source
            else:
                got = 0
                while got < size:
                    n = os.preadv(source, [view[off + got : off + size]], got)
                    if n <= 0:
                        raise MissingFile(f"{index.name}: {name} is shorter than it was")
                    got += n
                digest, slot, st, what = check
                ensure_intact(index, slot, digest, view[off : off + size], st, what)
            off += tarstream.padded(size)
        return buf
    finally:
        for _, source, _, _ in plan:
            if not isinstance(source, bytes):
                os.close(source)


def triplet_tar(index: ReleaseIndex, reader: SafeReader, row: int) -> bytes:
    """The tar of one triplet: s1.png, s2.png, naip.png, naip_hires_0..3.png and metadata.json."""
    meta = {"release": index.name, **index.rows([row])[0]}
    return bytes(pack_samples(index, reader, [(row, meta, "")], "metadata.json", end=True))
