"""One aligned triplet in one response: a plain tar of its PNGs and metadata.json."""

from __future__ import annotations

import asyncio
import hashlib

from fastapi import APIRouter, Request

from scale_alibi.serve.catalog import Catalog
from scale_alibi.serve.errors import ApiError
from scale_alibi.serve.files import CACHE_IMMUTABLE, CORS, TAR, Blob, etag_matches
from scale_alibi.serve.integrity import DamagedFile
from scale_alibi.serve.responses import RawResponse, blob_response
from scale_alibi.serve.routers.common import triplet_row_or_404
from scale_alibi.serve.samples import MissingFile, triplet_tar

_DOC = (
    "A ustar archive readable by any tar tool: `s1.png`, `s2.png`, `naip.png` (256 px at zoom z), "
    "`naip_hires_0.png`..`naip_hires_3.png` (the four zoom z+1 NAIP children in row-major order: "
    "(2x,2y), (2x+1,2y), (2x,2y+1), (2x+1,2y+1); paste them 2x2 for the 512 px image) and "
    "`metadata.json` (the manifest row plus `release`)."
)


def triplets_router(catalog: Catalog, sources) -> APIRouter:
    """Route /triplets/{release}/{z}/{x}/{y}."""
    router = APIRouter(tags=["triplets"])

    @router.api_route(
        "/triplets/{release}/{z}/{x}/{y}",
        methods=["GET", "HEAD"],
        summary="One triplet, all modalities, as a tar of PNGs",
        description=_DOC,
        response_class=RawResponse,
        responses={200: {"content": {"application/x-tar": {}}}},
    )
    async def triplet(request: Request, release: str, z: int, x: int, y: int) -> RawResponse:
        index, row = triplet_row_or_404(catalog, release, z, x, y)
        digest = hashlib.sha256(f"{index.etag_seed}|triplet|{z}|{x}|{y}".encode()).hexdigest()
        etag = f'"{digest}"'.encode()
        for name, value in request.scope["headers"]:
            if name == b"if-none-match" and etag_matches(value, etag):
                return RawResponse(304, [(b"etag", etag), (b"cache-control", CACHE_IMMUTABLE), CORS], b"")
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, triplet_tar, index, sources, row)
        except MissingFile:
            raise ApiError(404, f"triplet {z}/{x}/{y} of {release!r} has files missing on disk") from None
        except DamagedFile as exc:
            raise ApiError(500, str(exc)) from None
        blob = Blob.make(body, digest, TAR)
        disposition = (b"content-disposition", f'attachment; filename="{release}_{z}_{x}_{y}.tar"'.encode())
        blob = Blob(blob.body, blob.etag, blob.content_type, blob.headers + [disposition])
        return blob_response(request, blob)

    return router
