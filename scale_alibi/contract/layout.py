"""Where a release's files lie, and whether it is read from its tile tree or its archives.

Only the contract layer imports this module (an import-linter contract): every other module reads a
release through `scale_alibi.contract.reader` (or `Release` for a local directory), so the layout is
written once. The one writer of tiles, `curate build`'s metatile cutter, is the named exception.
"""

from __future__ import annotations

from collections.abc import Callable

from scale_alibi.contract.names import LAYERS


def tile_name(layer: str, z: int, x: int, y: int) -> str:
    """The path of tile (layer, z, x, y) relative to its release ('/'-separated: also an object key)."""
    return f"{layer}/{z}/{x}/{y}.png"


def archive_name(layer: str) -> str:
    """The file name of a layer's archive beside the manifest: `OUT/<release>/<layer>.pmtiles`."""
    return f"{layer}.pmtiles"


def has_tree(is_dir: Callable[[str], bool]) -> bool:
    """Whether a release holds any layer of the XYZ tile tree; `is_dir(name)` tells whether the
    entry `name` of the release is a directory."""
    return any(is_dir(layer) for layer in LAYERS)


def reads_archives(is_dir: Callable[[str], bool], is_file: Callable[[str], bool]) -> bool:
    """The tree-vs-archives rule: a release is read from its PMTiles archives when it has no tile tree
    and all three archives; otherwise from its tree (even a partial one: a missing tile is missing,
    never taken from an archive that may be older than the tree)."""
    return not has_tree(is_dir) and all(is_file(archive_name(layer)) for layer in LAYERS)
