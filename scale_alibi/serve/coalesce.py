"""One socket write per small response instead of two.

uvicorn writes a response's status line and headers as soon as the app starts the response, and
its body when the app sends it: two `write` syscalls for a 760-byte tile, where a write over
loopback (the TCP stack and the peer's wake-up) costs more than all the Python of a request
(`strace -c` on the serve benchmark: 2 writes per tile, 80% of the server's syscall time). This
transport holds a small first write (a response head) until the next write or the end of the
current event-loop iteration, then hands both to the real transport in one `writelines`: one
writev. Order is kept; nothing is held past the iteration in which it was written.
"""

from __future__ import annotations

import asyncio

HOLD_BYTES = 16 * 1024  # a response head; larger writes go out at once


class CoalescingTransport:
    """Wraps an asyncio transport: holds one small write so that it leaves with the next."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data) -> None:
        """Write `data` after anything held; a small write with nothing held is held briefly."""
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.writelines([held, data])
        elif len(data) <= HOLD_BYTES and not self._transport.is_closing():
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks) -> None:
        """Write each of `chunks`, after anything held."""
        self.flush()
        self._transport.writelines(chunks)

    def flush(self) -> None:
        """Send what is held now (dropped if the connection was aborted or lost meanwhile)."""
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Close after sending what is held (a 4xx written just before closing still leaves)."""
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (len(self._held) if self._held is not None else 0)

    def __getattr__(self, name: str):
        # is_closing, pause_reading, resume_reading, get_extra_info, abort, set_protocol, ...
        return getattr(self._transport, name)
