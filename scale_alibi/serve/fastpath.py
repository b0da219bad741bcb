"""A pure-ASGI fast path for single tiles, in front of FastAPI (and of its middleware stack).

A tile request costs a dict look-up and two `send` calls: no routing, no validation models, no
response objects. Anything it cannot answer with a tile (errors, other paths, other methods)
goes on to the FastAPI app, which validates and explains.
"""

from __future__ import annotations

from scale_alibi.serve.errors import store_unavailable
from scale_alibi.serve.files import conditional_response
from scale_alibi.serve.stores import StoreUnavailable
from scale_alibi.serve.tiles import TileStore

_METHODS = frozenset(("GET", "HEAD"))


class TileFastPath:
    """Answers GET/HEAD of known tiles from memory (or one safe disk read); anything else is declined."""

    def __init__(self, store: TileStore):
        self.store = store

    async def serve(self, scope, send) -> bool:
        """Send the tile response for `scope` and return True, or return False without sending."""
        if scope["type"] != "http" or scope["method"] not in _METHODS:
            return False
        path = scope["path"]
        blob = self.store.cache.get(path)
        if blob is None:
            if not path.startswith("/tiles/"):
                return False
            try:
                blob = await self.store.by_path(path)
            except StoreUnavailable as exc:  # answered here: the full app would wait on the store again
                status, headers, body = store_unavailable(path, exc)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return True
            except Exception:  # let the full app answer (and log) with its JSON error handling
                return False
            if blob is None:
                return False
        status, headers, body = conditional_response(blob, scope["headers"])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True
