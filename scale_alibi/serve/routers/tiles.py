"""XYZ PNG tiles and TileJSON per release and layer."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from scale_alibi.contract.release import ATTRIBUTION
from scale_alibi.serve.errors import ApiError
from scale_alibi.serve.integrity import DamagedFile
from scale_alibi.serve.responses import RawResponse, blob_response, json_response
from scale_alibi.serve.routers.common import JSON_METHODS, check_layer, check_tile, release_or_404
from scale_alibi.serve.tiles import TileStore

_TILE_DOC = "A 256 px PNG tile, bytes exactly as built; ETag is the manifest's sha256 of them."


def tiles_router(store: TileStore) -> APIRouter:
    """Routes under /tiles (the fast path answers most tile requests before they get here)."""
    router = APIRouter(tags=["tiles"])

    @router.api_route("/tiles/{release}/{layer}/tilejson.json", methods=JSON_METHODS,
                      summary="TileJSON 3.0 of one layer")
    async def tilejson(request: Request, release: str, layer: str) -> RawResponse:
        index = release_or_404(store.catalog, release)
        check_layer(layer)
        minzoom, maxzoom = index.layer_zooms(layer)
        w, s, e, n = index.bounds
        base = str(request.base_url).rstrip("/")
        doc = {
            "tilejson": "3.0.0",
            "name": f"{release} {layer}",
            "description": f"{layer} tiles of release {release}; tiles exist only where the release has triplets",
            "version": "1.0.0",
            "scheme": "xyz",
            "tiles": [f"{base}/tiles/{release}/{layer}/{{z}}/{{x}}/{{y}}.png"],
            "minzoom": minzoom,
            "maxzoom": maxzoom,
            "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, minzoom],
            "attribution": ATTRIBUTION[layer],
            "tile_size": 256,
        }
        return json_response(request, doc)

    @router.api_route(
        "/tiles/{release}/{layer}/{z}/{x}/{y}.png",
        methods=["GET", "HEAD"],
        summary="One XYZ tile",
        description=_TILE_DOC,
        response_class=RawResponse,
        responses={200: {"content": {"image/png": {}}}, 304: {}, 206: {}, 404: {}, 416: {}, 422: {}, 500: {}},
    )
    async def tile(
        request: Request,
        release: str,
        layer: str,
        z: int = Path(..., description="zoom"),
        x: int = Path(..., description="column"),
        y: int = Path(..., description="row (XYZ: 0 at the north)"),
    ) -> RawResponse:
        index = release_or_404(store.catalog, release)
        check_layer(layer)
        check_tile(z, x, y)
        try:
            blob = await store.load(index, layer, z, x, y)
        except DamagedFile as exc:
            raise ApiError(500, str(exc)) from None
        if blob is None:
            raise ApiError(404, f"no {layer} tile {z}/{x}/{y} in release {release!r}")
        return blob_response(request, blob)

    return router
