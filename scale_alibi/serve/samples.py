"""Triplets as tar members: the seven PNGs (bytes as stored) and the manifest row as JSON.

Members are packed straight into one preallocated buffer: each tile is read once (from its file
or its archive, see scale_alibi.serve.tilesource), from the page cache into its place in the tar (no
intermediate bytes objects, no join); from a bucket, the tiles of a batch are fetched concurrently.
"""

from __future__ import annotations

import json

import numpy as np

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.release import triplet_files, triplet_tiles
from scale_alibi.serve import tarstream
from scale_alibi.serve.catalog import MEMBERS, ReleaseIndex
from scale_alibi.serve.integrity import ensure_intact
from scale_alibi.serve.tilesource import TileSources, TileSpan, close_all

# Members carry a fixed mtime (the epoch, as reproducible archives do), so that a tar's bytes
# depend on the release's content alone: its ETag names the same bytes from any copy of the
# release, on any disk or in a bucket.
MEMBER_MTIME = 0
_ZEROS = memoryview(tarstream.ZEROS)  # padding, sliced without a copy


class MissingFile(ScaleAlibiError):
    """A file the manifest lists is missing on disk or resolves outside the data directory."""


def row_json(row: dict) -> bytes:
    """A manifest row as compact, key-sorted JSON."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()


def pack_samples(
    index: ReleaseIndex, sources: TileSources, samples: list[tuple[int, dict, str]], metadata_name: str,
    end: bool = False,
) -> memoryview:
    """Tar bytes of triplets given as (manifest row, metadata with z/x/y, member prefix): PNGs, then metadata."""
    tiles = sources.of(index)
    members = [triplet_tiles(int(m["z"]), int(m["x"]), int(m["y"])) for _, m, _ in samples]
    # All tiles of the batch at once: a bucket fetches them concurrently.
    spans = tiles.locate_many([tile for triplet in members for _, tile in triplet])
    try:
        # (member name, tile span or bytes, size, (sha256, file slot, stat, description) of a tile or None)
        plan: list[tuple[str, TileSpan | bytes, int, tuple | None]] = []
        found = iter(spans)
        for (row, metadata, prefix), triplet in zip(samples, members):
            z, x, y = int(metadata["z"]), int(metadata["x"]), int(metadata["y"])
            for i, ((name, _), (_, digest)) in enumerate(zip(triplet, triplet_files(metadata))):
                span = next(found)
                if span is None:
                    raise MissingFile(f"{index.name}: {name} of row {row} is not readable")
                tile_check = (digest, row * MEMBERS + i, span.st, f"{name} of {z}/{x}/{y}")
                plan.append((f"{prefix}{name}.png", span, span.size, tile_check))
            meta = row_json(metadata)
            plan.append((f"{prefix}{metadata_name}", meta, len(meta), None))
        total = sum(tarstream.BLOCK + tarstream.padded(size) for _, _, size, _ in plan)
        # Not zeroed (every byte is written below, padding too): zeroing a fresh buffer of a batch
        # cost a pass over memory and its page faults, an eighth of a shard stream's CPU (profiled).
        view = np.empty(total + (len(tarstream.END) if end else 0), dtype=np.uint8).data
        off = 0
        for name, content, size, check in plan:
            view[off : off + tarstream.BLOCK] = tarstream.header(name, size, MEMBER_MTIME)
            off += tarstream.BLOCK
            data = view[off : off + size]
            if isinstance(content, bytes):
                data[:] = content
            elif not content.read_into(data):
                raise MissingFile(f"{index.name}: {name} is shorter than it was")
            if check is not None:  # a tile: its bytes as read must hash to the manifest's
                digest, slot, st, what = check
                ensure_intact(index, slot, digest, data, st, what)
            off += size
            pad = -size % tarstream.BLOCK
            view[off : off + pad] = _ZEROS[:pad]
            off += pad
        if end:
            view[off:] = tarstream.END
        return view
    finally:
        close_all(spans)


def triplet_tar(index: ReleaseIndex, sources: TileSources, row: int) -> bytes:
    """The tar of one triplet: s1.png, s2.png, naip.png, naip_hires_0..3.png and metadata.json."""
    meta = {"release": index.name, **index.rows([row])[0]}
    return bytes(pack_samples(index, sources, [(row, meta, "")], "metadata.json", end=True))
