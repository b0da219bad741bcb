"""uvicorn's httptools protocol with the limits it lacks: a deadline for the request head, and caps
on the head's size and header count.

uvicorn closes a keep-alive connection only after a response; a client that connects and sends
nothing, or half a request head, would hold its socket (and a file descriptor) forever. Here every
connection must deliver a complete request head within `header timeout` seconds of connecting or
of the previous response, or it is closed (a sweep every quarter timeout: within 1.25 timeouts);
a head over MAX_HEAD_BYTES or MAX_HEADERS gets a 431.

The caps apply to each request head alone: pipelined requests in one write, and a request body
(even on a GET), are not head bytes. A completed head is measured from its parsed fields; a head
still incomplete at the end of a read is bounded by the bytes after the last blank line of that
read (an upper bound), so a client that never ends its head is refused after ~MAX_HEAD_BYTES.
Settings come from the environment so that every uvicorn worker process sees the same ones.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.serve.chunks import CHUNK_WRITER, CHUNKED_PATHS, ChunkWriter
from scale_alibi.serve.coalesce import CoalescingTransport
from scale_alibi.serve.runner import (
    DEFAULT_HEADER_TIMEOUT,
    HEADER_TIMEOUT_ENV,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
)


class _HeadRefused(ScaleAlibiError):
    """Raised from a parser callback to stop parsing a head over the caps (`_refusal` says which)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a request-head deadline, head size and count caps, and a copy-free
    writer of chunked bodies in each request's scope."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT))
        self.waiting_since: float | None = None  # loop time it began waiting for a request head
        self._in_head = False  # a request head has begun and is not complete yet
        self._began_in_read = False  # ... and it began in the read being parsed
        self._head_bytes = 0  # bytes of that incomplete head so far (an upper bound)
        self._head_fields = 0
        self._refusal: str | None = None

    def _await_head(self) -> None:
        # One attribute per request rather than a timer per request (a call_later and a cancel on
        # the tile fast path); one sweep per event loop closes the connections past the deadline.
        self.waiting_since = self.loop.time()

    def connection_made(self, transport) -> None:
        # Speed: a response's head and a small body leave in one write (scale_alibi.serve.coalesce).
        # cast: it is a Transport by delegation (the calls it does not define go to the wrapped one)
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self._await_head()
        if not getattr(self.server_state, "head_sweep", False):
            # attr-defined: our own flag on uvicorn's per-server state, so that one sweep runs per server
            self.server_state.head_sweep = True  # type: ignore[attr-defined]
            _sweep(self.loop, self.connections, self.header_timeout)

    def connection_lost(self, exc) -> None:
        self.waiting_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._began_in_read = False
        continued = self._in_head  # a head left incomplete by the previous read goes on in this one
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # The read ended inside a head: the parser holds its bytes until the blank line, so bound them.
        if self._began_in_read or not continued:
            blank = data.rfind(b"\r\n\r\n")  # the head began after the last blank line of this read
            self._head_bytes = len(data) - (blank + 4 if blank >= 0 else 0)
        else:
            self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refusal = f"request head over {MAX_HEAD_BYTES} bytes"
            self.send_400_response(self._refusal)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._began_in_read = True
        self._head_bytes = self._head_fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > MAX_HEADERS:
            self._refusal = f"more than {MAX_HEADERS} header fields"
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.waiting_since = None
        self._in_head = False
        # The head's own bytes: request line and fields (the separators' few bytes each are counted too).
        size = len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._refusal = f"request head over {MAX_HEAD_BYTES} bytes"
            raise _HeadRefused
        super().on_headers_complete()
        cycle = self.cycle
        # a request to answer (not an upgrade) whose response streams chunks
        if cycle is not None and cycle.scope is self.scope and self.url.startswith(CHUNKED_PATHS):
            # Speed: chunked bodies (shards) go to the socket without uvicorn's copy (scale_alibi.serve.chunks).
            self.scope.setdefault("extensions", {})[CHUNK_WRITER] = ChunkWriter(cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed head; a head over the caps gets a JSON 431 saying which."""
        self.waiting_since = None
        if self._refusal is None:
            super().send_400_response(msg)
            return
        body = json.dumps({"detail": self._refusal}).encode()
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n", b"connection: close\r\n\r\n", body,
        ]))
        self.transport.close()


def _sweep(loop, connections: set, timeout: float) -> None:
    """Close every connection that has waited over `timeout` seconds for a request head; again
    every quarter timeout, for as long as the event loop runs."""
    now = loop.time()
    for conn in list(connections):
        since = getattr(conn, "waiting_since", None)
        if since is not None and now - since > timeout and not conn.transport.is_closing():
            conn.transport.close()
    loop.call_later(timeout / 4, _sweep, loop, connections, timeout)
