"""HTTP access to a `curate serve` server: release metadata and shard streams that resume after failures.

One urllib3 pool per worker process (keep-alive connections reused across shards). Connection
errors, 5xx and truncated streams are retried with exponential backoff (``retries`` times, up to
``max_backoff_s``); a retry asks for ``start=`` the number of complete samples already received from
that shard, so a server restart mid-epoch loses and repeats nothing. A server that cannot be reached
raises `scale_alibi.contract.errors.UserError` at once, naming the URL.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import TRIPLET_MEMBERS
from scale_alibi.model.data.tar import StreamBroken, iter_samples, iter_tar

log = logging.getLogger(__name__)


# connection refused/reset, timeouts, truncated bodies, 5xx: worth another try
_RETRIABLE = (urllib3.exceptions.HTTPError, http.client.HTTPException, StreamBroken, OSError)
PIECE_BYTES = 1 << 23  # the largest piece of a shard body read at once (the server sends batches of ~4 MiB)

class ShardClient:
    """HTTP access to one server: release metadata and shard streams, with retries and backoff."""

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 10, backoff_s: float = 0.1, max_backoff_s: float = 5.0,
                 on_retry: Callable[[str], None] | None = None):
        self.url = url.rstrip("/")
        self.on_retry = on_retry  # told about every retry (logs, tests); runs in the worker process
        self.timeout = urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._pool: urllib3.PoolManager | None = None
        self._pid = 0
        self.reconnects = 0  # how many times a request or stream was retried (for logs and tests)

    @property
    def pool(self) -> urllib3.PoolManager:
        # one pool per process: a forked DataLoader worker must not share its parent's sockets
        if self._pool is None or self._pid != os.getpid():
            self._pool = urllib3.PoolManager(num_pools=4, maxsize=2, retries=False, timeout=self.timeout)
            self._pid = os.getpid()
        return self._pool

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    def _sleep(self, attempt: int) -> None:
        time.sleep(min(self.max_backoff_s, self.backoff_s * 2**attempt))

    def _request(self, path: str, params: Mapping[str, Any], stream: bool) -> urllib3.BaseHTTPResponse:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        resp = self.pool.request("GET", url, preload_content=not stream, decode_content=True)
        if resp.status >= 500:
            if stream:
                resp.drain_conn()
            raise StreamBroken(f"HTTP {resp.status} from {url}")
        if resp.status != 200:
            body = resp.data[:300].decode(errors="replace") if not stream else resp.read(300).decode(errors="replace")
            raise UserError(f"the server refused {url}: HTTP {resp.status} {body}")
        return resp

    def release_info(self, release: str, shard_size: int, split: str, start_attempts: int = 3) -> dict[str, Any]:
        """GET /releases/{release}/shards; UserError if the server cannot be reached (after a few quick tries)."""
        params = {"shard_size": shard_size, "split": split}
        last: Exception | None = None
        for attempt in range(start_attempts):
            try:
                return json.loads(self._request(f"/releases/{urllib.parse.quote(release)}/shards", params, stream=False).data)
            except _RETRIABLE as exc:
                last = exc
                if attempt + 1 < start_attempts:
                    self._sleep(attempt)
        reason = getattr(last, "reason", None) or last
        raise UserError(
            f"cannot reach the tile server at {self.url} ({type(reason).__name__}: {reason}); "
            f"start it with `curate serve --data OUT` or pass the right URL"
        )

    def stream_shard(self, release: str, index: int, params: Mapping[str, Any], expected: int, start: int = 0) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        """(offset, key, members) of shard `index` from `start` on; reconnects with start= after failures."""
        offset = start
        failures = 0
        path = f"/shards/{urllib.parse.quote(release)}/{index}.tar"
        while offset < expected:
            resp = None
            try:
                resp = self._request(path, {**params, "start": offset}, stream=True)
                # the body as the server's chunks (at most PIECE_BYTES each), members sliced out of them
                for key, members in iter_samples(iter_tar(resp.stream(PIECE_BYTES))):
                    missing = [m for m in TRIPLET_MEMBERS if m not in members]
                    if missing:
                        # the last sample of a cut stream may be partial; anything else is a server bug
                        raise StreamBroken(f"sample {key} of shard {index} lacks {missing}")
                    if offset >= expected:
                        raise UserError(f"shard {index} of {release} has more than the {expected} samples the server announced")
                    yield offset, key, members
                    offset += 1
                    failures = 0
                if offset < expected:
                    raise StreamBroken(f"shard {index} ended after {offset} of {expected} samples")
                resp.drain_conn()  # the tar's trailing zero blocks; then the connection is reused
                resp.release_conn()
            except _RETRIABLE as exc:
                if resp is not None:
                    resp.close()  # never hand a half-read connection back to the pool
                    resp.release_conn()
                if failures >= self.retries:
                    raise UserError(f"shard {index} of {release} from {self.url} failed {failures + 1} times in a row: {exc}") from exc
                log.warning("shard %s: %s; retrying from sample %s", index, exc, offset)
                if self.on_retry is not None:
                    self.on_retry(f"shard {index} from sample {offset}: {exc}")
                self._sleep(failures)
                failures += 1
                self.reconnects += 1
