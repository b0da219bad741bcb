"""Chunks of a chunked response body written to the socket without a copy.

uvicorn frames every chunk of a chunked body as `b"".join([size line, body, CRLF])`: a copy of
the whole body per chunk, a megabyte per shard batch (`perf record` of the shard benchmark:
3-4% of the stream's CPU in that memmove). A `ChunkWriter` writes the same three pieces with one
`writelines` (one writev; uvloop keeps references to the buffers it could not send yet, no copy),
after the same flow-control wait and disconnect check as uvicorn's `send`. The server's protocol
(scale_alibi.serve.protocol) puts one in the ASGI scope of each request for a shard (the paths under
`CHUNKED_PATHS`), under `CHUNK_WRITER`; a response that finds none (another server, a test client,
a path in another form) sends its chunks through `send` as usual. Only shard requests get one: a
writer and an `extensions` dict in every request's scope cost the 760 B tile benchmark ~12 % of its
requests/s (`python benchmarks/serve_bench.py --seconds 4`, with and without, alternated).

The bytes on the wire are the same either way: `<hex size>\\r\\n<body>\\r\\n` per chunk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

CHUNK_WRITER = "scale_alibi.chunk_writer"  # key in scope["extensions"]
CHUNKED_PATHS = b"/shards/"  # request targets whose responses are chunked streams (the shard route)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ChunkWriter:
    """Writes body chunks of one request's chunked response straight to its transport."""

    def __init__(self, cycle: RequestResponseCycle):
        self.cycle = cycle

    async def write(self, body) -> None:
        """Send `body` (any buffer, not copied; left unchanged until sent) as one chunk of the
        started, chunked response; nothing when the client has gone."""
        cycle = self.cycle
        if not cycle.response_started or cycle.response_complete or not cycle.chunked_encoding:
            raise RuntimeError("a chunk can only be written inside a started chunked response")
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected or not len(body):
            return
        cycle.transport.writelines([b"%x\r\n" % len(body), body, b"\r\n"])


def chunk_sender(scope: dict[str, Any], send: Send) -> Callable[[Any], Awaitable[None]]:
    """An awaitable `write(body)` sending one more chunk of the response: the scope's ChunkWriter,
    or a `send` of a body message with more to come when the server offers none."""
    writer = scope.get("extensions", {}).get(CHUNK_WRITER)
    if isinstance(writer, ChunkWriter):
        return writer.write

    async def via_send(body) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})

    return via_send
