"""Response helpers shared by the routers: raw bytes with precomputed headers, cacheable JSON."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from fastapi import Request
from starlette.responses import Response

from scale_alibi.serve.files import CORS, JSON, Blob, conditional_response, etag_matches

CACHE_SHORT = b"public, max-age=60"


class RawResponse(Response):
    """A response whose status, raw headers and body are already computed."""

    def __init__(self, status_code: int = 200, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b""):
        self.status_code = status_code
        self.raw_headers = list(headers)
        self.body = body
        self.background = None


def blob_response(request: Request, blob: Blob) -> RawResponse:
    """200/206/304/416 for an immutable blob, honouring the request's conditional headers."""
    return RawResponse(*conditional_response(blob, request.scope["headers"]))


def json_response(request: Request, obj: object, cache_control: bytes = CACHE_SHORT) -> RawResponse:
    """JSON with an ETag of its bytes (so clients revalidate with 304) and the given Cache-Control."""
    body = json.dumps(obj, separators=(",", ":"), default=str).encode()
    etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
    for name, value in request.scope["headers"]:
        if name == b"if-none-match" and etag_matches(value, etag):
            return RawResponse(304, [(b"etag", etag), (b"cache-control", cache_control), CORS], b"")
    headers = [
        (b"content-type", JSON),
        (b"content-length", str(len(body)).encode()),
        (b"etag", etag),
        (b"cache-control", cache_control),
        CORS,
    ]
    return RawResponse(200, headers, body)
