"""The FastAPI application: `create_app(data_dir)`, and `app_from_env()` for uvicorn workers."""

from __future__ import annotations

import gc
import os

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from scale_alibi import __version__
from scale_alibi.contract.host_memory import retain_freed_memory
from scale_alibi.contract.storage import is_remote
from scale_alibi.serve import errors
from scale_alibi.serve.catalog import Catalog
from scale_alibi.serve.fastpath import TileFastPath
from scale_alibi.serve.files import BlobCache
from scale_alibi.serve.routers.health import health_router
from scale_alibi.serve.routers.releases import releases_router
from scale_alibi.serve.routers.shards import shards_router
from scale_alibi.serve.routers.tiles import tiles_router
from scale_alibi.serve.routers.triplets import triplets_router
from scale_alibi.serve.routers.viewer import static_files, viewer_router
from scale_alibi.serve.stores import DirectoryStore, ReleaseStore
from scale_alibi.serve.tiles import TileStore
from scale_alibi.serve.tilesource import TileSources

DATA_ENV = "SCALE_ALIBI_DATA"
CACHE_ENV = "SCALE_ALIBI_TILE_CACHE_MB"
DEFAULT_CACHE_MB = 256

DESCRIPTION = """Tiles, aligned triplets and training shards of scale-alibi releases.

Releases are immutable once their manifest exists; only finished releases are served.
Tiles are standard XYZ PNGs (Leaflet, MapLibre, QGIS, GDAL read them unchanged).
"""


class ServeApp(FastAPI):
    """FastAPI with the tile fast path checked before routing and before any middleware (~10 us saved)."""

    fast_path: TileFastPath | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.fast_path is not None and await self.fast_path.serve(scope, send):
            return
        await super().__call__(scope, receive, send)


def open_store(data: str | os.PathLike[str]) -> ReleaseStore:
    """The store named by `data`: an fsspec URL (``s3://bucket/prefix``) or a local directory."""
    if is_remote(data):
        from scale_alibi.serve.bucket import BucketStore  # the store's library is imported only here

        return BucketStore(os.fspath(data))
    return DirectoryStore(data)


def create_app(data_dir: str | os.PathLike[str], cache_mb: int | None = None) -> FastAPI:
    """The service for the releases under `data_dir`, a directory or a bucket URL (indexed once, here, per process)."""
    releases = open_store(data_dir)
    catalog = Catalog(releases)
    sources = TileSources(releases.tile_source)  # each release's tree, PMTiles archives or bucket objects
    mb = cache_mb if cache_mb is not None else int(os.environ.get(CACHE_ENV, DEFAULT_CACHE_MB))
    store = TileStore(catalog, sources, BlobCache(mb * 2**20))
    catalog.on_change.append(lambda name: store.cache.drop_prefix(f"/tiles/{name}/"))

    # Interactive docs pull their JS from a CDN; the schema itself is at /openapi.json.
    app = ServeApp(title="scale-alibi", version=__version__, description=DESCRIPTION, docs_url=None, redoc_url=None)
    errors.install(app)
    app.include_router(health_router(catalog))
    app.include_router(releases_router(catalog))
    app.include_router(shards_router(catalog, sources))
    app.include_router(tiles_router(store))
    app.include_router(triplets_router(catalog, sources))
    app.include_router(viewer_router())
    app.mount("/static", static_files(), name="static")
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["ETag", "Content-Range", "Content-Length", "X-Shard-Triplets"],
        max_age=86400,
    )
    app.fast_path = TileFastPath(store)  # tiles skip middleware and routing entirely
    app.state.catalog = catalog
    app.state.store = store
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the data directory (or bucket URL) comes from $SCALE_ALIBI_DATA."""
    # Shard batches and HTTP chunks (~1 MB each) are freed and allocated again per triplet:
    # reused from the heap, not page-faulted in afresh (scale_alibi.contract.host_memory).
    retain_freed_memory()
    app = create_app(os.environ[DATA_ENV])
    # Everything built so far lives as long as the worker: keep the cyclic GC from rescanning it
    # (full collections over the manifest index and the framework show up as tail latency).
    gc.freeze()
    return app
