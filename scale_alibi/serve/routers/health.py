"""Liveness for load balancers and the process helper."""

from __future__ import annotations

from fastapi import APIRouter, Request

from scale_alibi.serve.catalog import Catalog
from scale_alibi.serve.responses import RawResponse, json_response
from scale_alibi.serve.routers.common import JSON_METHODS


def health_router(catalog: Catalog) -> APIRouter:
    """Route /health: 200 with the number of finished releases this process serves."""
    router = APIRouter(tags=["health"])

    @router.api_route("/health", methods=JSON_METHODS, summary="Liveness")
    async def health(request: Request) -> RawResponse:
        return json_response(request, {"status": "ok", "releases": len(catalog.names())}, b"no-store")

    return router
