"""Training shards: WebDataset tars streamed (chunked) from the release's tiles, in epoch order.

The rows of shard `index` are `scale_alibi.contract.release.shard_rows` over the manifest rows of one split
(manifest order, i.e. sorted by z, x, y), so any client that knows (n, seed, epoch, shard_size)
can split shards across ranks and workers without overlap, and resume mid-shard with `start`.
Files are read in a worker thread, one batch ahead of the socket, in batches whose size the tile
source sets (~4 MiB from a disk: scale_alibi.serve.tilesource.TileSource); each batch is one chunk,
written without a copy (scale_alibi.serve.chunks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import numpy as np
from starlette.responses import Response

from scale_alibi.serve import tarstream
from scale_alibi.serve.catalog import ReleaseIndex
from scale_alibi.serve.chunks import chunk_sender
from scale_alibi.serve.errors import RETRY_AFTER, STORE_UNAVAILABLE
from scale_alibi.serve.files import CACHE_IMMUTABLE, CORS, JSON, TAR, etag_matches
from scale_alibi.serve.integrity import DamagedFile
from scale_alibi.serve.samples import MissingFile, pack_samples
from scale_alibi.serve.stores import StoreUnavailable
from scale_alibi.serve.tilesource import TileSource, TileSources

log = logging.getLogger(__name__)


def sample_key(row: dict) -> str:
    """The WebDataset key of a triplet: `{z}_{x}_{y}` (no dots: WebDataset splits keys at the first dot)."""
    return f"{row['z']}_{row['x']}_{row['y']}"


def shard_etag(index: ReleaseIndex, *params: object) -> bytes:
    """A strong ETag for a shard: the release's manifest hash and the shard's parameters."""
    text = "|".join([index.etag_seed, "shard", *map(str, params)])
    return b'"' + hashlib.sha256(text.encode()).hexdigest()[:40].encode() + b'"'


def build_batch(index: ReleaseIndex, sources: TileSources, rows: list[int], metas: list[dict]) -> memoryview:
    """Tar bytes of the triplets at manifest rows `rows` with their manifest rows `metas` (in a worker thread)."""
    return pack_samples(index, sources, [(r, m, sample_key(m) + ".") for r, m in zip(rows, metas)], "json")


def first_batch(index: ReleaseIndex, sources: TileSources, rows: np.ndarray) -> tuple[TileSource, list[dict], memoryview]:
    """The release's tile source, all manifest rows of the shard (one Arrow take) and the tar bytes
    of its first batch (`batch_triplets` of the source: see TileSource for the batch sizes)."""
    source = sources.of(index)  # here, in a thread: opening a bucket's source lists it
    metas = index.rows(rows)
    head = rows[: source.batch_triplets].tolist()
    return source, metas, build_batch(index, sources, head, metas[: len(head)]) if head else memoryview(b"")


def _failure(exc: Exception) -> tuple[int, str]:
    """The status and reason of a shard whose first batch could not be read."""
    if isinstance(exc, MissingFile):
        return 404, f"shard has files missing on disk: {exc}"
    if isinstance(exc, StoreUnavailable):
        log.error("shard: %s", exc)  # the endpoint and bucket are for the operator only
        return 503, STORE_UNAVAILABLE
    return 500, str(exc)


class ShardStream(Response):
    """An ASGI response streaming the tar of `rows` (manifest rows, in order) as chunked body."""

    def __init__(self, index: ReleaseIndex, sources, rows: np.ndarray, etag: bytes, filename: str):
        self.index = index
        self.sources = sources
        self.rows = rows
        self.etag = etag
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", TAR),
            (b"etag", etag),
            (b"cache-control", CACHE_IMMUTABLE),
            (b"content-disposition", f'attachment; filename="{filename}"'.encode()),
            (b"x-shard-triplets", str(len(rows)).encode()),
            CORS,
        ]

    async def __call__(self, scope, receive, send) -> None:
        for name, value in scope["headers"]:
            if name == b"if-none-match" and etag_matches(value, self.etag):
                await send({"type": "http.response.start", "status": 304, "headers": self.raw_headers[1:3] + [CORS]})
                await send({"type": "http.response.body", "body": b""})
                return
        loop = asyncio.get_running_loop()
        rows = self.rows.tolist()
        # The first batch is read before the status line, so a broken shard still gets a JSON 404 (500: damaged).
        try:
            source, metas, first = await loop.run_in_executor(None, first_batch, self.index, self.sources, self.rows)
        except (MissingFile, DamagedFile, StoreUnavailable) as exc:
            status, detail = _failure(exc)
            body = json.dumps({"detail": detail}).encode()
            headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), CORS]
            if status == 503:
                headers.append(RETRY_AFTER)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        write = chunk_sender(scope, send)
        pending = None
        count = min(source.batch_triplets, len(rows))  # triplets in `first`
        done = sent = 0  # triplets and bytes sent so far
        try:
            while True:
                start = done + count  # the next batch, read while this one is sent
                if start < len(rows):
                    n = source.next_batch_triplets(start, sent + len(first))
                    pending = loop.run_in_executor(None, build_batch, self.index, self.sources,
                                                   rows[start : start + n], metas[start : start + n])
                if disconnected.is_set():
                    return
                await write(first)
                done, sent = start, sent + len(first)
                if pending is None:
                    break
                first, pending, count = await pending, None, n
            await send({"type": "http.response.body", "body": tarstream.END})
        except Exception:
            # Headers are gone: the only honest signal left is a truncated chunked body.
            log.exception("shard stream of %s aborted", self.index.name)
            raise
        finally:
            watcher.cancel()
            if pending is not None:
                pending.cancel()
