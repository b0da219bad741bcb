"""uvicorn's httptools protocol with the limits it lacks: a deadline for the request head, and caps
on the head's size and header count.

uvicorn closes a keep-alive connection only after a response; a client that connects and sends
nothing, or half a request head, would hold its socket (and a file descriptor) forever. Here every
connection must deliver a complete request head within `header timeout` seconds of connecting or
of the previous response, or it is closed; a head over MAX_HEAD_BYTES or MAX_HEADERS gets a 431.
Settings come from the environment so that every uvicorn worker process sees the same ones.
"""

from __future__ import annotations

import json
import os

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serve.runner import DEFAULT_HEADER_TIMEOUT, HEADER_TIMEOUT_ENV, MAX_HEAD_BYTES, MAX_HEADERS


class _TooManyHeaders(Exception):
    """Raised from a parser callback to stop parsing a head with more than MAX_HEADERS fields."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a request-head deadline and head size and count caps."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT))
        self._head_timer = None  # armed while the connection waits for a request head
        self._head_bytes = 0
        self._head_fields = 0
        self._refusal: str | None = None

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_bytes = self._head_fields = 0
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:  # noqa: D102 - asyncio.Protocol
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc) -> None:  # noqa: D102 - asyncio.Protocol
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:  # noqa: D102 - asyncio.Protocol
        if self._head_timer is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refusal = f"request head over {MAX_HEAD_BYTES} bytes"
                self.send_400_response(self._refusal)
                return
        super().data_received(data)

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102 - httptools callback
        self._head_fields += 1
        if self._head_fields > MAX_HEADERS:
            self._refusal = f"more than {MAX_HEADERS} header fields"
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:  # noqa: D102 - httptools callback
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:  # noqa: D102 - uvicorn callback
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed head; a head over the caps gets a JSON 431 saying which."""
        self._stop_head_timer()
        if self._refusal is None:
            super().send_400_response(msg)
            return
        body = json.dumps({"detail": self._refusal}).encode()
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n", b"connection: close\r\n\r\n", body,
        ]))
        self.transport.close()
