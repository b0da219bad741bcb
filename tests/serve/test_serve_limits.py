"""`curate serve` under hostile or careless clients: idle and half-sent connections are closed
within the server's timeouts while real requests keep succeeding, oversized request heads get a
431, and a busy port is one `error:` line with exit status 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from scale_alibi.serve.process import ServerProcess, free_port
from tests.release_factory import X0, Y0, Z, make_release

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1.0  # the server's header and keep-alive timeouts in these tests


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closes `sock` before `deadline` (whatever it sent first is skipped)."""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_idle_and_half_sent_connections_are_closed_within_the_timeout_while_requests_succeed(tmp_path):
    make_release(tmp_path, "r", nx=1, ny=1)
    tile = f"/tiles/r/s2/{Z}/{X0}/{Y0}.png"
    args = ["--header-timeout", str(TIMEOUT_S), "--keep-alive-timeout", str(TIMEOUT_S)]
    with ServerProcess(tmp_path, args=args) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        addr = ("127.0.0.1", server.port)
        idle = [socket.create_connection(addr) for _ in range(200)]
        half = [socket.create_connection(addr) for _ in range(20)]
        for i, s in enumerate(half):  # a request line, some headers, never the blank line
            s.sendall(f"GET {tile} HTTP/1.1\r\nHost: x\r\nX-Slow: {i}\r\n".encode())
        kept = socket.create_connection(addr)  # one full request, then idle on keep-alive
        kept.sendall(f"GET {tile} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        opened = time.monotonic()
        while time.monotonic() - opened < TIMEOUT_S + 0.5:  # real clients are served all along
            assert client.get(tile).status_code == 200
            assert client.get("/releases/r").status_code == 200
            time.sleep(0.05)
        deadline = opened + TIMEOUT_S + 2.0
        still_open = [s for s in idle + half + [kept] if not _closed_by_server(s, deadline)]
        assert not still_open, f"{len(still_open)} of 221 connections still open {TIMEOUT_S + 2.0:.0f}s after opening"
        for s in idle + half + [kept]:
            s.close()
        assert client.get(tile).status_code == 200


def _send_head(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_oversized_or_overlong_request_heads_get_a_431():
    from tests.serve_fixtures import shared_server

    server = shared_server()
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    for head, why in ((big, b"over 65536 bytes"), (many, b"more than 100 header fields")):
        answer = _send_head(server.port, head)
        assert answer.startswith(b"HTTP/1.1 431 ") and why in answer, answer[:300]
    assert httpx.get(server.url + "/health").status_code == 200


def test_serve_on_a_busy_port_is_one_error_line_and_exit_2(tmp_path):
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        r = subprocess.run([sys.executable, "-m", "scale_alibi", "serve", "--data", str(tmp_path), "--port", str(port)],
                           check=False, capture_output=True, text=True, timeout=60, env=env)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and str(port) in errors[0] and "--port" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def _read_responses(sock: socket.socket, count: int, timeout_s: float) -> list[bytes]:
    """The status lines of the first `count` responses on `sock` (bodies skipped by Content-Length)."""
    sock.settimeout(timeout_s)
    data, statuses = b"", []
    while len(statuses) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            continue
        head = data[:head_end].split(b"\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        if len(data) < head_end + 4 + length:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            continue
        statuses.append(head[0])
        data = data[head_end + 4 + length:]
    return statuses


def test_twelve_hundred_pipelined_requests_in_one_write_are_all_answered():
    from tests.serve_fixtures import shared_server

    server = shared_server()
    n = 1200
    one = b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: pipeline-test/1.0 (many requests in one write)\r\n\r\n"
    assert len(one) * n > 65536  # more than one head's cap in a single write
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(one * n)
        statuses = _read_responses(s, n, timeout_s=60)
    assert len(statuses) == n and set(statuses) == {b"HTTP/1.1 200 OK"}, (len(statuses), set(statuses))


def test_a_get_with_a_one_megabyte_body_is_answered_and_its_body_is_not_taken_for_a_head():
    from tests.serve_fixtures import shared_server

    server = shared_server()
    body = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection goes on after the body
        statuses = _read_responses(s, 2, timeout_s=30)
    assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"], statuses


def test_a_head_that_never_ends_is_still_refused_after_its_cap_across_reads():
    from tests.serve_fixtures import shared_server

    server = shared_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = b""
        try:
            for _ in range(40):  # 40 x 4 KiB, one read each: the head grows past 65536 bytes, never ends
                s.sendall(b"a" * 4096)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 ") and b"over 65536 bytes" in answer, answer[:300]


def test_a_range_with_digits_python_would_also_read_is_not_honoured():
    from tests.serve_fixtures import raw_get, shared_data_dir, shared_server

    server, data = shared_server(), shared_data_dir()
    tile = ("s2", Z, X0, Y0)
    whole = data.small.tile_path(*tile).read_bytes()
    target = "/tiles/small/{}/{}/{}/{}.png".format(*tile)
    status, headers, body = raw_get(server.url, target, headers={"Range": "bytes=10-20"})
    assert status == 206 and body == whole[10:21] and headers["content-range"] == f"bytes 10-20/{len(whole)}"
    for bad in ("bytes=1_0-2_0", "bytes=+10-20", "bytes=10-2_0", "bytes=\u0661\u0660-20".encode().decode("latin-1")):
        status, headers, body = raw_get(server.url, target, headers={"Range": bad})
        assert status == 200 and body == whole and "content-range" not in headers, (bad, status)
