"""Tile bytes by address: manifest look-up, a read from the release's tile source in a thread, in-memory LRU."""

from __future__ import annotations

import asyncio
import re

from scale_alibi.serve.catalog import LAYERS, Catalog, ReleaseIndex
from scale_alibi.serve.files import Blob, BlobCache
from scale_alibi.serve.integrity import ensure_intact
from scale_alibi.serve.tilesource import TileSources

# The canonical tile URL (no leading zeros): the fast path serves exactly these and lets every
# other spelling fall through to the validating FastAPI route.
TILE_PATH = re.compile(
    r"/tiles/([^/]+)/(s1|s2|naip)/(0|[1-9][0-9]?)/(0|[1-9][0-9]{0,9})/(0|[1-9][0-9]{0,9})\.png"
)


def tile_key(release: str, layer: str, z: int, x: int, y: int) -> str:
    """The canonical URL path of a tile, also its cache key."""
    return f"/tiles/{release}/{layer}/{z}/{x}/{y}.png"


class TileStore:
    """Serves tile blobs of finished releases; shared by the fast path and the tile route."""

    def __init__(self, catalog: Catalog, sources: TileSources, cache: BlobCache):
        self.catalog = catalog
        self.sources = sources
        self.cache = cache

    async def load(self, index: ReleaseIndex, layer: str, z: int, x: int, y: int) -> Blob | None:
        """The tile's blob, or None when the manifest lacks it or its file is unreadable/unsafe;
        DamagedFile when its bytes differ from the manifest's sha256."""
        key = tile_key(index.name, layer, z, x, y)
        blob = self.cache.get(key)
        if blob is not None:
            return blob
        if layer not in LAYERS:
            return None
        ref = index.tile_ref(layer, z, x, y)
        if ref is None:
            return None
        body = await asyncio.get_running_loop().run_in_executor(
            None, self._read_intact, index, ref, layer, z, x, y
        )
        if body is None:
            return None
        blob = Blob.make(body, ref[0])
        self.cache.put(key, blob)
        return blob

    def _read_intact(self, index: ReleaseIndex, ref: tuple[str, int], layer: str, z: int, x: int,
                     y: int) -> bytes | None:
        """The tile's bytes (None: missing or unsafe); DamagedFile when they differ from the manifest."""
        got = self.sources.of(index).read(layer, z, x, y)
        if got is None:
            return None
        body, st = got
        ensure_intact(index, ref[1], ref[0], body, st, f"{layer} tile {z}/{x}/{y}")
        return body

    async def by_path(self, path: str) -> Blob | None:
        """The blob for a canonical tile URL path, or None (the caller falls back to the full route)."""
        m = TILE_PATH.fullmatch(path)
        if m is None:
            return None
        index = self.catalog.get(m.group(1))
        if index is None:
            return None
        return await self.load(index, m.group(2), int(m.group(3)), int(m.group(4)), int(m.group(5)))
