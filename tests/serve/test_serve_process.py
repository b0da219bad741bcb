"""The server as a process: several workers, kill and restart on the same port, the CLI."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.serve.process import ServerProcess
from tests.release_factory import X0, Y0, Z
from tests.serve_fixtures import shared_data_dir, shared_server


def test_two_workers_kill_and_restart_on_the_same_port():
    data = shared_data_dir()
    tile = f"/tiles/small/s2/{Z}/{X0}/{Y0}.png"
    expect = data.small.tile_path("s2", Z, X0, Y0).read_bytes()
    with ServerProcess(data.data, workers=2) as server:
        url = server.url
        with httpx.Client(base_url=url, timeout=10) as c:
            assert all(c.get(tile).content == expect for _ in range(10))
        # Kill mid-shard, as a crash would: the client sees a broken stream, then a refused connection.
        with httpx.Client(base_url=url, timeout=10) as c, c.stream("GET", "/shards/small/0.tar?shard_size=12&split=all") as r:
            assert r.status_code == 200
            chunks = r.iter_bytes(1024)
            next(chunks)
            server.kill()
            with pytest.raises(httpx.HTTPError):  # truncated chunked body: the loader retries
                for _ in chunks:
                    pass
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health")
        server.restart()
        assert server.url == url
        assert httpx.get(url + tile).content == expect
        pid = server.proc.pid
    assert server.proc.poll() is not None
    deadline = time.monotonic() + 5
    while live_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_members(pid) == []  # no worker outlived the server


def live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are not zombies (zombies hold no socket and no memory)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_a_slow_shard_reader_does_not_block_other_requests():
    server = shared_server()
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /shards/small/0.tar?shard_size=12&split=all HTTP/1.1\r\nHost: x\r\n\r\n")
        slow.recv(100)  # the stream has started; now stop reading it
        t0 = time.monotonic()
        for _ in range(5):
            assert httpx.get(f"{server.url}/tiles/small/s1/{Z}/{X0}/{Y0}.png", timeout=5).status_code == 200
            assert httpx.get(f"{server.url}/releases", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 5


def test_cli_rejects_a_missing_data_dir(tmp_path):
    r = CliRunner().invoke(main, ["serve", "--data", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert "not a directory" in r.output
    assert "Traceback" not in r.output


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH is Python 3.11+")
def test_the_server_runs_its_own_package_whatever_the_working_directory(tmp_path, monkeypatch):
    # `python -m scale_alibi` puts the working directory first on sys.path: started from another
    # checkout (an older commit, for a benchmark's before/after), the server ran that checkout's code.
    decoy = tmp_path / "elsewhere" / "scale_alibi"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "__main__.py").write_text("raise SystemExit('the package in the working directory ran')\n")
    monkeypatch.chdir(decoy.parent)
    with ServerProcess(shared_data_dir().data) as server:
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
