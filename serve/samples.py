"""Triplets as tar members: the seven PNGs (bytes as stored) and the manifest row as JSON.

Members are packed straight into one preallocated buffer: each tile is read once (from its file
or its archive, see serve.tilesource), from the page cache into its place in the tar (no
intermediate bytes objects, no join).
"""

from __future__ import annotations

import json

from curate.release import triplet_tiles
from serve import tarstream
from serve.catalog import ReleaseIndex
from serve.tilesource import TileSources, TileSpan


class MissingFile(Exception):
    """A file the manifest lists is missing on disk or resolves outside the data directory."""


def row_json(row: dict) -> bytes:
    """A manifest row as compact, key-sorted JSON."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()


def pack_samples(
    index: ReleaseIndex, sources: TileSources, samples: list[tuple[int, dict, str]], metadata_name: str,
    end: bool = False,
) -> bytearray:
    """Tar bytes of triplets given as (manifest row, metadata with z/x/y, member prefix): PNGs, then metadata."""
    source = sources.of(index)
    plan: list[tuple[str, TileSpan | bytes, int]] = []  # (member name, tile span or bytes, size)
    try:
        for row, metadata, prefix in samples:
            for name, tile in triplet_tiles(int(metadata["z"]), int(metadata["x"]), int(metadata["y"])):
                span = source.locate(*tile)
                if span is None:
                    raise MissingFile(f"{index.name}: {name} of row {row} is not readable")
                plan.append((f"{prefix}{name}.png", span, span.size))
            meta = row_json(metadata)
            plan.append((f"{prefix}{metadata_name}", meta, len(meta)))
        total = sum(tarstream.BLOCK + tarstream.padded(size) for _, _, size in plan)
        buf = bytearray(total + (len(tarstream.END) if end else 0))  # zeroed: padding and end blocks for free
        view = memoryview(buf)
        off = 0
        for name, source, size in plan:
            head = tarstream.header(name, size, index.mtime)
            view[off : off + len(head)] = head
            off += len(head)
            if isinstance(source, bytes):
                view[off : off + size] = source
            elif not source.read_into(view[off : off + size]):
                raise MissingFile(f"{index.name}: {name} is shorter than it was")
            off += tarstream.padded(size)
        return buf
    finally:
        for _, source, _ in plan:
            if not isinstance(source, bytes):
                source.close()


def triplet_tar(index: ReleaseIndex, sources: TileSources, row: int) -> bytes:
    """The tar of one triplet: s1.png, s2.png, naip.png, naip_hires_0..3.png and metadata.json."""
    meta = {"release": index.name, **index.rows([row])[0]}
    return bytes(pack_samples(index, sources, [(row, meta, "")], "metadata.json", end=True))
