"""One data directory and one running server per test process, shared by the serve test modules."""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
from pathlib import Path

from scale_alibi.serve.process import ServerProcess
from tests.release_factory import DataDir, make_data_dir

_state: dict[str, object] = {}


def shared_data_dir() -> DataDir:
    """The factory's data directory (built once per process, removed at exit)."""
    if "data" not in _state:
        root = Path(tempfile.mkdtemp(prefix="serve-test-"))
        atexit.register(shutil.rmtree, root, True)
        _state["data"] = make_data_dir(root)
    return _state["data"]  # type: ignore[return-value]


def shared_server() -> ServerProcess:
    """A server on the shared data directory (started once per process, stopped at exit)."""
    if "server" not in _state:
        server = ServerProcess(shared_data_dir().data, workers=1).start()
        atexit.register(server.stop)
        _state["server"] = server
    server = _state["server"]
    if server.proc.poll() is not None:  # a test killed it: bring it back
        server.start()
    return server  # type: ignore[return-value]


def raw_get(base_url: str, target: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send `target` byte for byte (no URL normalisation) and return (status, headers, body)."""
    host, port = base_url.removeprefix("http://").split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    out = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        out[k.strip().lower()] = v.strip()
    if out.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), out, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            break
        out += body[:n]
        body = body[n + 2 :]
    return out
