"""Release listing, triplet metadata (paged and single) and coverage outlines."""

from __future__ import annotations

import asyncio
from typing import Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Query, Request

from scale_alibi.serve.catalog import LAYERS, Catalog, ReleaseIndex, pack_key
from scale_alibi.serve.errors import ApiError
from scale_alibi.serve.responses import RawResponse, json_response
from scale_alibi.serve.routers.common import (
    JSON_METHODS,
    check_tile,
    release_or_404,
    triplet_row_or_404,
)

MAX_PAGE = 1000


def links(name: str) -> dict:
    """Relative URLs of a release's other resources."""
    r = quote(name, safe="")
    return {
        "tilejson": {layer: f"/tiles/{r}/{layer}/tilejson.json" for layer in LAYERS},
        "triplets": f"/releases/{r}/triplets",
        "shards": f"/releases/{r}/shards",
        "coverage": f"/releases/{r}/coverage.geojson",
        "stats": f"/releases/{r}/stats.json",
    }


def item(index: ReleaseIndex, row: dict) -> dict:
    """A manifest row plus the URL of its triplet tar."""
    r = quote(index.name, safe="")
    return {**row, "triplet": f"/triplets/{r}/{row['z']}/{row['x']}/{row['y']}"}


def parse_cursor(cursor: str) -> int:
    """A cursor names the first triplet of a page: `z-x-y`."""
    try:
        z, x, y = (int(v) for v in cursor.split("-"))
        check_tile(z, x, y)
    except (ValueError, ApiError):
        raise ApiError(422, f"bad cursor {cursor!r}: pass the next_cursor of a previous page") from None
    return pack_key(z, x, y)


def releases_router(catalog: Catalog) -> APIRouter:
    """Routes under /releases (shards have their own router)."""
    router = APIRouter(tags=["releases"])

    @router.api_route("/releases", methods=JSON_METHODS, summary="Finished releases with counts, zooms and bounds")
    async def releases(request: Request) -> RawResponse:
        docs = []
        for name in catalog.names():
            index = catalog.get(name)
            if index is not None:
                docs.append({**index.summary(), "links": links(name)})
        return json_response(request, {"releases": docs})

    @router.api_route("/releases/{release}", methods=JSON_METHODS, summary="One release")
    async def release(request: Request, release: str) -> RawResponse:
        index = release_or_404(catalog, release)
        return json_response(request, {**index.summary(), "links": links(release)})

    @router.api_route("/releases/{release}/triplets", methods=JSON_METHODS,
                      summary="Page through a release's triplets (manifest rows)")
    async def triplets(
        request: Request,
        release: str,
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
        offset: int | None = Query(None, ge=0, description="rows to skip (instead of a cursor)"),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
        split: Literal["train", "heldout", "all"] = Query("all"),
    ) -> RawResponse:
        index = release_or_404(catalog, release)
        if cursor is not None and offset is not None:
            raise ApiError(422, "pass either cursor or offset, not both")
        rows = index.split_rows[split]  # manifest order = (z, x, y) order
        if cursor is not None:
            keys = index.row_keys[rows]
            start = int(np.searchsorted(keys, parse_cursor(cursor)))
        else:
            start = offset or 0
        page = rows[start : start + limit]
        items = [item(index, r) for r in index.rows(page)] if len(page) else []
        end = start + len(page)
        next_cursor = None
        if end < len(rows):
            nxt = index.rows(rows[end : end + 1])[0]
            next_cursor = f"{nxt['z']}-{nxt['x']}-{nxt['y']}"
        doc = {
            "release": release,
            "split": split,
            "total": int(len(rows)),
            "offset": start,
            "limit": limit,
            "items": items,
            "next_cursor": next_cursor,
            "next": (
                f"/releases/{quote(release, safe='')}/triplets?cursor={next_cursor}&limit={limit}&split={split}"
                if next_cursor
                else None
            ),
        }
        return json_response(request, doc)

    @router.api_route("/releases/{release}/triplets/{z}/{x}/{y}", methods=JSON_METHODS,
                      summary="One triplet's manifest row")
    async def triplet_meta(request: Request, release: str, z: int, x: int, y: int) -> RawResponse:
        index, row = triplet_row_or_404(catalog, release, z, x, y)
        return json_response(request, item(index, index.rows([row])[0]))

    @router.api_route("/releases/{release}/stats.json", methods=JSON_METHODS,
                      summary="Per-channel normalisation stats (`curate stats`)")
    async def stats(request: Request, release: str) -> RawResponse:
        index = release_or_404(catalog, release)
        try:
            doc = await asyncio.get_running_loop().run_in_executor(None, index.stats)
        except ValueError:
            raise ApiError(500, f"stats.json of release {release!r} is not valid JSON; rerun "
                                f"`curate stats --data DATA --release {release}`") from None
        if doc is None:
            raise ApiError(404, f"release {release!r} has no stats.json; run `curate stats --data DATA "
                                f"--release {release}` (served at once, no restart needed)")
        return json_response(request, doc)

    @router.api_route("/releases/{release}/coverage.geojson", methods=JSON_METHODS,
                      summary="Triplet footprints as GeoJSON")
    async def coverage(request: Request, release: str) -> RawResponse:
        index = release_or_404(catalog, release)
        # Large releases make a large document: build and serialise it off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, lambda: json_response(request, index.coverage()))

    return router
