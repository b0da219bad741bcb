"""Training-shard endpoints: shard counts per split and WebDataset tars by shard index."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Path, Query, Request

from scale_alibi.contract.release import shard_count, shard_rows
from scale_alibi.serve.catalog import Catalog
from scale_alibi.serve.errors import ApiError
from scale_alibi.serve.responses import RawResponse, json_response
from scale_alibi.serve.routers.common import JSON_METHODS, release_or_404
from scale_alibi.serve.shards import ShardStream, shard_etag
from scale_alibi.serve.tilesource import TileSources

MAX_SHARD_SIZE = 100_000
MAX_SEED = 2**63 - 1
Split = Literal["train", "heldout", "all"]

_SIZE = Query(1000, ge=1, le=MAX_SHARD_SIZE, description="triplets per shard (the last shard may be short)")
_SPLIT = Query("train", description="manifest split: train, heldout or all")


def shards_router(catalog: Catalog, sources: TileSources) -> APIRouter:
    """Routes /releases/{release}/shards and /shards/{release}/{index}.tar."""
    router = APIRouter(tags=["shards"])

    @router.api_route("/releases/{release}/shards", methods=JSON_METHODS, summary="How many shards cover a split")
    async def shard_info(request: Request, release: str, shard_size: int = _SIZE, split: Split = _SPLIT) -> RawResponse:
        index = release_or_404(catalog, release)
        n = len(index.split_rows[split])
        doc = {
            "release": release,
            "split": split,
            "triplets": n,
            "shard_size": shard_size,
            "num_shards": shard_count(n, shard_size),
        }
        return json_response(request, doc)

    @router.api_route(
        "/shards/{release}/{shard}.tar",
        methods=["GET", "HEAD"],
        summary="One training shard as a WebDataset tar (chunked)",
        description=(
            "Samples keyed `{z}_{x}_{y}` with members `.s1.png`, `.s2.png`, `.naip.png`, "
            "`.naip_hires_0.png`..`.naip_hires_3.png` and `.json` (the manifest row), in the order "
            "`scale_alibi.contract.release.shard_rows(n_split, seed, epoch, shard_size, shard)[start:]`."
        ),
        response_class=RawResponse,
        responses={200: {"content": {"application/x-tar": {}}}},
    )
    async def shard(
        request: Request,
        release: str,
        shard: int = Path(..., description="shard index, 0..num_shards-1"),
        shard_size: int = _SIZE,
        seed: int = Query(0, ge=0, le=MAX_SEED),
        epoch: int = Query(0, ge=0, le=MAX_SEED),
        split: Split = _SPLIT,
        start: int = Query(0, ge=0, description="skip this many triplets of the shard (resume)"),
    ) -> ShardStream:
        index = release_or_404(catalog, release)
        split_rows = index.split_rows[split]
        n = len(split_rows)
        count = shard_count(n, shard_size)
        if not 0 <= shard < count:
            raise ApiError(404, f"shard {shard} out of range: {split} of {release!r} has {count} shards of {shard_size}")
        # A permutation of a large split takes milliseconds: keep it off the event loop.
        positions = await asyncio.get_running_loop().run_in_executor(
            None, shard_rows, n, seed, epoch, shard_size, shard
        )
        if start > len(positions):
            raise ApiError(422, f"start={start} beyond the {len(positions)} triplets of shard {shard}")
        rows = split_rows[positions[start:]]
        etag = shard_etag(index, split, shard_size, seed, epoch, shard, start)
        return ShardStream(index, sources, rows, etag, f"{release}-{split}-{shard:06d}.tar")

    return router
