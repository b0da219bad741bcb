"""A small response leaves the server in one socket write (its head and body together), counted
with strace on the real server: uvicorn alone wrote the head and the body separately."""

from __future__ import annotations

import io
import re
import shutil
import socket
import subprocess
import time

import pytest
from PIL import Image

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


def get_chunked(port: int, path: str) -> tuple[bytes, list[bytes]]:
    """The head and the chunk bodies, as framed on the wire, of a chunked GET of `path`."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(1 << 20):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    chunks = []
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            assert rest == b"\r\n", rest[:100]  # no trailers, nothing after the last chunk
            return head, chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


def tar_members(data: bytes) -> list[str]:
    """Names of the tar members that begin in `data`, read from their 512-byte headers (which must
    lie at the start of `data` and at every member's end: a chunk that cuts no member)."""
    names, off = [], 0
    while off < len(data):
        head = data[off : off + 512]
        if head == b"\0" * 512:
            break
        size = int(head[124:136].rstrip(b"\0"), 8)
        names.append(head[:100].rstrip(b"\0").decode())
        off += 512 + -(-size // 512) * 512
    assert off <= len(data)
    return names


def shard_chunks(root, release: str, n: int) -> list[list[str]]:
    """The sample keys of each data chunk of shard 0 (all `n` triplets) of `release`, in order; each
    chunk must hold whole samples, and the stream must end with the tar's end blocks as its own chunk."""
    with ServerProcess(root) as server:
        head, chunks = get_chunked(server.port, f"/shards/{release}/0.tar?shard_size={n}&split=all")
    assert head.startswith(b"HTTP/1.1 200 ")
    *data, end = chunks
    assert end == b"\0" * 1024
    keys = [list(dict.fromkeys(name.split(".")[0] for name in tar_members(chunk))) for chunk in data]
    assert [len(tar_members(chunk)) for chunk in data] == [8 * len(k) for k in keys]  # whole samples only
    return keys


def test_a_shard_from_disk_leaves_in_chunks_of_about_four_mib(tmp_path):
    # One chunk (one thread hop, one socket writev) per ~4 MiB: per-chunk costs amortised.
    # It was one triplet (~1 MB here) per chunk: 16 chunks for this shard.
    rel = make_release(tmp_path, "r", nx=4, ny=4)
    rows = rel.read_manifest().to_pylist()
    per_triplet = sum(p.stat().st_size for p in (tmp_path / "r").rglob("*.png")) / len(rows)  # ~1 MB, noisy PNGs
    keys = shard_chunks(tmp_path, "r", len(rows))
    assert sorted(k for chunk in keys for k in chunk) == sorted(f"{r['z']}_{r['x']}_{r['y']}" for r in rows)
    assert len(keys[0]) == 4  # the first batch: four triplets, read before the status line
    for chunk in keys[1:-1]:  # later ones: ~4 MiB by the shard's average so far
        assert abs(len(chunk) * per_triplet - (4 << 20)) <= 1.5 * per_triplet, (len(chunk), per_triplet)
    assert len(keys) <= 1 + -(-(len(rows) - 4) * per_triplet // (3 << 20))


def flat_png(seed: int) -> bytes:
    """A 256 px PNG of one colour: a few hundred bytes, like tiles of open water or no-data."""
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (seed % 256, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_shard_of_small_tiles_leaves_in_few_chunks(tmp_path):
    # Tiles of a few hundred bytes: 40 triplets are ~60 kB with their headers, so after the first four
    # the other 36 fit one ~4 MiB batch. By a fixed count it was 40 chunks (one per triplet).
    rel = make_release(tmp_path, "r", nx=5, ny=8, tile=flat_png)
    n = rel.read_manifest().num_rows
    assert max(p.stat().st_size for p in (tmp_path / "r").rglob("*.png")) < 2000
    assert [len(chunk) for chunk in shard_chunks(tmp_path, "r", n)] == [4, 36]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_shard_chunks_are_written_apart_from_their_framing(tmp_path):
    # uvicorn joined each chunk's size line, body and CRLF into one new buffer (a copy of every
    # shard byte) and wrote that; the chunk writer hands the three pieces to one writev instead.
    rel = make_release(tmp_path, "r", nx=4, ny=4)
    n = rel.read_manifest().num_rows
    with ServerProcess(tmp_path) as server:
        assert server.proc is not None
        get_chunked(server.port, f"/shards/r/0.tar?shard_size={n}&split=all")  # warm: verdicts, page cache
        log = tmp_path / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-s", "24", "-e", "trace=" + ",".join(WRITES), "-o", str(log),
                                   "-p", str(server.proc.pid)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            _, chunks = get_chunked(server.port, f"/shards/r/0.tar?shard_size={n}&split=all")
        finally:
            tracer.terminate()
            tracer.wait(10)
    text = log.read_text()
    big = [c for c in chunks if len(c) > 65536]
    # Each large chunk's size line is an iovec of its own: `{iov_base="<hex>\r\n", iov_len=<len>}`.
    for chunk in big:
        line = b"%x" % len(chunk)
        assert f'{{iov_base="{line.decode()}\\r\\n", iov_len={len(line) + 2}}}' in text, (len(chunk), text[:2000])
    # ... and no write begins with a large chunk's size line glued to its bytes (what uvicorn's join wrote).
    glued = [int(h, 16) for h in re.findall(r'(?:write\(\d+, |iov_base=)"([0-9a-f]+)\\r\\n[^"]', text)]
    assert big and not [size for size in glued if size > 65536], glued
