"""A pure-ASGI fast path for single tiles, in front of FastAPI.

A tile request costs a dict look-up and two `send` calls: no routing, no validation models, no
response objects. Anything it cannot answer with a tile (errors, other paths, other methods)
goes on to the FastAPI app, which validates and explains.
"""

from __future__ import annotations

from serve.files import conditional_response
from serve.tiles import TileStore

_METHODS = frozenset(("GET", "HEAD"))


class TileFastPath:
    """ASGI middleware answering GET/HEAD of known tiles from memory (or one safe disk read)."""

    def __init__(self, app, store: TileStore):
        self.app = app
        self.store = store

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in _METHODS:
            path = scope["path"]
            blob = self.store.cache.get(path)
            if blob is None and path.startswith("/tiles/"):
                blob = await self.store.by_path(path)
            if blob is not None:
                status, headers, body = conditional_response(blob, scope["headers"])
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
