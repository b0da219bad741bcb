"""The release's vocabulary, shared by every stage: its layers, the members of a triplet and the
modalities a triplet decodes to (the model reads a subset of them: ENCODED_MODALITIES)."""

from __future__ import annotations

LAYERS: tuple[str, ...] = ("s1", "s2", "naip")
# Credit each layer's data requires; served in TileJSON and written into PMTiles archives.
ATTRIBUTION: dict[str, str] = {
    "s1": "Contains modified Copernicus Sentinel data (Sentinel-1)",
    "s2": "Contains modified Copernicus Sentinel data (Sentinel-2)",
    "naip": "NAIP imagery: USDA Farm Production and Conservation Business Center, public domain",
}
# The four NAIP tiles at zoom z+1 that make the 512 px image of tile (z, x, y), in row-major
# order: (dx, dy) offsets of the child (2x+dx, 2y+dy). Names are the triplet/shard member names.
HIRES_CHILDREN: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (0, 1), (1, 1))
HIRES_NAMES: tuple[str, ...] = ("naip_hires_0", "naip_hires_1", "naip_hires_2", "naip_hires_3")
TRIPLET_MEMBERS: tuple[str, ...] = ("s1", "s2", "naip", *HIRES_NAMES)
# A triplet decoded: one image per modality, naip_hires assembled from the four HIRES_NAMES tiles.
MODALITIES: tuple[str, ...] = ("s1", "s2", "naip", "naip_hires")
# Channels kept per modality: s1 PNGs are RGB with R empty, G = VV, B = VH.
CHANNELS: dict[str, int] = {"s1": 2, "s2": 3, "naip": 3, "naip_hires": 3}


def triplet_tiles(z: int, x: int, y: int) -> list[tuple[str, tuple[str, int, int, int]]]:
    """(member name, tile address (layer, z, x, y)) of every tile of triplet (z, x, y), in TRIPLET_MEMBERS order."""
    out = [(layer, (layer, z, x, y)) for layer in LAYERS]
    out += [(name, ("naip", z + 1, 2 * x + dx, 2 * y + dy)) for name, (dx, dy) in zip(HIRES_NAMES, HIRES_CHILDREN)]
    return out


# What the model encodes: the 256 px NAIP tile is served and measured, but the model reads NAIP at
# 512 px (naip_hires) only.
ENCODED_MODALITIES: tuple[str, ...] = ("s1", "s2", "naip_hires")
