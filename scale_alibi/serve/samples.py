"""Triplets as tar members: the seven PNGs (bytes as stored) and the manifest row as JSON.

Members are packed straight into one preallocated buffer: each tile is read once (from its file
or its archive, see scale_alibi.serve.tilesource), from the page cache into its place in the tar (no
intermediate bytes objects, no join); from a bucket, the tiles of a batch are fetched concurrently.
"""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.release import LAYERS, TRIPLET_MEMBERS, triplet_tiles
from scale_alibi.serve import tarstream
from scale_alibi.serve.catalog import MEMBERS, ReleaseIndex
from scale_alibi.serve.integrity import ensure_row_intact
from scale_alibi.serve.tilesource import TileSources, close_all

# Members carry a fixed mtime (the epoch, as reproducible archives do), so that a tar's bytes
# depend on the release's content alone: its ETag names the same bytes from any copy of the
# release, on any disk or in a bucket.
MEMBER_MTIME = 0
_ZEROS = memoryview(tarstream.ZEROS)  # padding, sliced without a copy


class MissingFile(ScaleAlibiError):
    """A file the manifest lists is missing on disk or resolves outside the data directory."""


# One encoder for every row: json.dumps builds a new one per call with these options (2 us a row).
_ROW_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_PNG_MEMBERS = tuple(f"{name}.png" for name in TRIPLET_MEMBERS)  # member name suffixes, in tile order
_HASH_COLUMNS = tuple(f"hash_{layer}" for layer in LAYERS)


def row_digests(row: dict) -> list[str]:
    """The sha256 of every file of a manifest row, in TRIPLET_MEMBERS order."""
    return [row[column] for column in _HASH_COLUMNS] + list(row["hash_naip_hires"])


def row_json(row: dict) -> bytes:
    """A manifest row as compact, key-sorted JSON."""
    return _ROW_ENCODER.encode(row).encode()


def _member_of(metadata: dict, i: int) -> str:
    """How file i of a triplet is named in a damaged-file message: `s2 of z/x/y`."""
    return f"{TRIPLET_MEMBERS[i]} of {metadata['z']}/{metadata['x']}/{metadata['y']}"


def pack_samples(
    index: ReleaseIndex, sources: TileSources, samples: list[tuple[int, dict, str]], metadata_name: str,
    end: bool = False,
) -> memoryview:
    """Tar bytes of triplets given as (manifest row, metadata with z/x/y, member prefix): PNGs, then metadata."""
    tiles = sources.of(index)
    addresses = [triplet_tiles(int(m["z"]), int(m["x"]), int(m["y"])) for _, m, _ in samples]
    # All tiles of the batch at once: a bucket fetches them concurrently.
    spans = tiles.locate_many([tile for triplet in addresses for _, tile in triplet])
    try:
        # Per-file work is the shard stream's Python cost (~340 files a 4 MiB batch): the member
        # names and sizes are laid out in one pass, then each file is read into its place and
        # checked, with the triplet's verdicts looked up at once (integrity.ensure_row_intact).
        metas = []
        total = 0
        padded = tarstream.padded
        for k, (row, metadata, _) in enumerate(samples):
            for i, span in enumerate(spans[k * MEMBERS : (k + 1) * MEMBERS]):
                if span is None:
                    raise MissingFile(f"{index.name}: {TRIPLET_MEMBERS[i]} of row {row} is not readable")
                total += padded(span.size)
            meta = row_json(metadata)
            metas.append(meta)
            total += padded(len(meta))
        total += (MEMBERS + 1) * tarstream.BLOCK * len(samples)
        # Not zeroed (every byte is written below, padding too): zeroing a fresh buffer of a batch
        # cost a pass over memory and its page faults, an eighth of a shard stream's CPU (profiled).
        view = np.empty(total + (len(tarstream.END) if end else 0), dtype=np.uint8).data
        header, block, zeros = tarstream.header, tarstream.BLOCK, _ZEROS
        off = 0
        for k, ((row, metadata, prefix), meta) in enumerate(zip(samples, metas)):
            files: list[tuple[memoryview, os.stat_result | None]] = []
            for i, span in enumerate(spans[k * MEMBERS : (k + 1) * MEMBERS]):
                assert span is not None  # checked above
                size = span.size
                view[off : off + block] = header(prefix + _PNG_MEMBERS[i], size, MEMBER_MTIME)
                off += block
                data = view[off : off + size]
                if not span.read_into(data):
                    raise MissingFile(f"{index.name}: {prefix}{_PNG_MEMBERS[i]} is shorter than it was")
                files.append((data, span.st))
                off += size
                pad = -size % block
                view[off : off + pad] = zeros[:pad]
                off += pad
            # The tiles' bytes as read must hash to the manifest's.
            ensure_row_intact(index, row, row_digests(metadata), files, partial(_member_of, metadata))
            size = len(meta)
            view[off : off + block] = header(prefix + metadata_name, size, MEMBER_MTIME)
            off += block
            view[off : off + size] = meta
            off += size
            pad = -size % block
            view[off : off + pad] = zeros[:pad]
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
