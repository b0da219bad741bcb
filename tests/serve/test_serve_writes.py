"""A small response leaves the server in one socket write (its head and body together), counted
with strace on the real server: uvicorn alone wrote the head and the body separately."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

from scale_alibi.serve.process import ServerProcess
from tests.release_factory import make_release

WRITES = ("write", "writev", "sendmsg", "sendto")


def get_keepalive(port: int, path: str, n: int) -> list[bytes]:
    """`n` GETs of `path` one after another on one keep-alive connection; the raw responses."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(n):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head).group(1))
            while len(body) < length:
                body += s.recv(65536)
            out.append(head + b"\r\n\r\n" + body)
    return out


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_tile_response_is_one_socket_write(tmp_path):
    rel = make_release(tmp_path, "r", nx=1, ny=1)
    row = rel.read_manifest().to_pylist()[0]
    path = f"/tiles/r/s2/{row['z']}/{row['x']}/{row['y']}.png"
    tile = rel.tile_path("s2", row["z"], row["x"], row["y"]).read_bytes()
    with ServerProcess(tmp_path) as server:
        assert server.proc is not None
        get_keepalive(server.port, path, 5)  # warm: the tile is in the memory cache
        log = tmp_path / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=" + ",".join(WRITES), "-o", str(log),
                                   "-p", str(server.proc.pid)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not log.exists() and time.monotonic() < deadline:  # strace opened its log: attached
                time.sleep(0.05)
            time.sleep(0.5)  # attached to every thread
            n = 100
            responses = get_keepalive(server.port, path, n)
        finally:
            tracer.terminate()
            tracer.wait(10)
    assert all(r.startswith(b"HTTP/1.1 200 ") and r.endswith(tile) for r in responses)
    writes = [line for line in log.read_text().splitlines() if re.match(r"(\d+\s+)?(" + "|".join(WRITES) + r")\(", line)]
    assert n <= len(writes) <= n + 5, f"{len(writes)} socket writes for {n} responses"
