"""The web map at `/` and its static files (Leaflet served from the package, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"


def viewer_router() -> APIRouter:
    """Route `/` (index.html); mount `static_files()` at /static alongside it."""
    router = APIRouter(tags=["viewer"])

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"cache-control": "no-cache"})

    return router


def static_files() -> StaticFiles:
    """The viewer's JS/CSS/images (symlinks not followed)."""
    return StaticFiles(directory=STATIC, follow_symlink=False)
