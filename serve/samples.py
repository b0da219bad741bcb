"""One triplet as tar members: the seven PNGs (bytes as stored) and its manifest row as JSON."""

from __future__ import annotations

import json

from serve import tarstream
from serve.catalog import ReleaseIndex
from serve.files import SafeReader


class MissingFile(Exception):
    """A file the manifest lists is missing on disk or resolves outside the data directory."""


def row_json(row: dict) -> bytes:
    """A manifest row as compact, key-sorted JSON."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()


def sample_members(
    index: ReleaseIndex, reader: SafeReader, row: int, metadata: dict, prefix: str, metadata_name: str
) -> list[bytes]:
    """Tar bytes of one triplet: `{prefix}{member}.png` for each PNG, then `{prefix}{metadata_name}`."""
    out: list[bytes] = []
    for name, path, _digest in index.triplet_files(row):
        data = reader.read(path)
        if data is None:
            raise MissingFile(f"{index.name}: {name} of row {row} is not readable")
        out += tarstream.member(f"{prefix}{name}.png", data, index.mtime)
    out += tarstream.member(f"{prefix}{metadata_name}", row_json(metadata), index.mtime)
    return out


def triplet_tar(index: ReleaseIndex, reader: SafeReader, row: int) -> bytes:
    """The tar of one triplet: s1.png, s2.png, naip.png, naip_hires_0..3.png and metadata.json."""
    meta = {"release": index.name, **index.rows([row])[0]}
    return b"".join(sample_members(index, reader, row, meta, "", "metadata.json") + [tarstream.END])
