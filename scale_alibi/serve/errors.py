"""JSON error bodies for every failure: client errors carry a reason, server errors never a trace."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.serve.files import CORS
from scale_alibi.serve.stores import StoreUnavailable

log = logging.getLogger(__name__)

STORE_UNAVAILABLE = "the object store holding the releases did not answer; try again shortly"
RETRY_AFTER = (b"retry-after", b"1")  # with every 503: the store is asked again on the next request


class ApiError(ScaleAlibiError):
    """A client-facing error: HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def store_unavailable(where: str, exc: StoreUnavailable) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of the 503 for a request the store did not answer, for the ASGI
    paths that answer before FastAPI's handlers (the reason is logged for the operator only)."""
    log.error("%s: %s", where, exc)
    body = json.dumps({"detail": STORE_UNAVAILABLE}).encode()
    return 503, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                 RETRY_AFTER, CORS], body


def install(app: FastAPI) -> None:
    """Register JSON handlers for ApiError and for anything unexpected (500 without a traceback)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("%s: %s", request.url.path, exc)  # the endpoint and bucket are for the operator only
        return JSONResponse({"detail": STORE_UNAVAILABLE}, status_code=503,
                            headers={RETRY_AFTER[0].decode(): RETRY_AFTER[1].decode()})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
