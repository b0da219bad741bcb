"""The synthetic world's servers: HTTP Range semantics, injected faults and delays, signed URLs and
their expiry, clean stops, the render cache, and the `curate world` command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pystac_client
import pytest
import rasterio

from tests.world_rows import search

COG = "image/tiff; application=geotiff; profile=cloud-optimized"


@pytest.fixture
def cog_url(world):
    world.files.clear_faults()
    item = search(world, "sentinel-1-rtc")[0]
    yield item.assets["vh"].href
    world.files.clear_faults()


def test_range_semantics(world, cog_url):
    size = int(httpx.head(cog_url).headers["Content-Length"])
    whole = httpx.get(cog_url).content
    assert len(whole) == size
    world.files.reset_stats()
    r = httpx.get(cog_url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == whole[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{size}" and r.headers["Accept-Ranges"] == "bytes"
    assert world.files.stats() == {"requests": 1, "bytes": 10}
    r = httpx.get(cog_url, headers={"Range": "bytes=-7"})
    assert r.status_code == 206 and r.content == whole[-7:]
    r = httpx.get(cog_url, headers={"Range": "bytes=0-3,100-104"})
    assert r.status_code == 206 and r.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert int(r.headers["Content-Length"]) == len(r.content)
    boundary = r.headers["Content-Type"].split("boundary=")[1].encode()
    parts = [p for p in r.content.split(b"--" + boundary) if p.strip(b"\r\n-")]
    bodies = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts]
    assert bodies == [whole[0:4], whole[100:105]] and b"Content-Range: bytes 100-104/" in parts[1]
    r = httpx.get(cog_url, headers={"Range": f"bytes={size + 10}-{size + 20}"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    h = httpx.head(cog_url, headers={"Range": "bytes=0-99"})
    assert h.status_code == 206 and h.headers["Content-Length"] == "100" and h.content == b""
    assert httpx.get(world.files_url + "/nope.tif").status_code == 404


@pytest.mark.parametrize("status", [429, 503])
def test_injected_errors_are_seen_then_clear(world, cog_url, status):
    world.files.inject(status=status, count=2)
    codes = [httpx.get(cog_url, headers={"Range": "bytes=0-9"}).status_code for _ in range(3)]
    assert codes == [status, status, 206]


def test_slow_responses(world, cog_url):
    world.files.slow(seconds=0.3, count=1)
    t0 = time.perf_counter()
    httpx.get(cog_url, headers={"Range": "bytes=0-9"})
    slow = time.perf_counter() - t0
    t0 = time.perf_counter()
    httpx.get(cog_url, headers={"Range": "bytes=0-9"})
    assert slow >= 0.3 and time.perf_counter() - t0 < 0.3


def test_signed_urls_and_expiry(world, cog_url):
    world.files.require_signature(True)
    assert httpx.get(cog_url).status_code == 403  # unsigned
    good = world.sign(cog_url, ttl_s=60)
    assert "se=" in good and "sig=" in good
    assert httpx.get(good, headers={"Range": "bytes=0-9"}).status_code == 206
    expired = world.sign(cog_url, ttl_s=-1)
    assert httpx.get(expired).status_code == 403
    assert world.sign(expired) == expired  # like planetary_computer: a signed href is not re-signed
    forged = good.replace("sig=", "sig=0")
    assert httpx.get(forged).status_code == 403
    # Items sign like planetary_computer.sign: a signed copy, the original untouched.
    item = search(world, "naip")[0]
    signed = world.sign(item)
    assert all("se=" in a.href for a in signed.assets.values()) and "se=" not in item.assets["image"].href
    with rasterio.open(signed.assets["image"].href) as ds:
        assert ds.count == 4
    # ...and as pystac_client's modifier, like planetary_computer.sign_inplace.
    client = pystac_client.Client.open(world.stac_url, modifier=world.sign_inplace)
    found = list(client.search(collections=["sentinel-1-rtc"], bbox=world.bbox).items())
    assert found and all("sig=" in i.assets["vv"].href for i in found)
    assert httpx.get(found[0].assets["vv"].href, headers={"Range": "bytes=0-9"}).status_code == 206


# -- lifecycle, caching and CLI ---------------------------------------------------------------
def _port_open(url):
    host, port = url.rsplit("//", 1)[1].split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def test_servers_stop_cleanly(world_dir):
    from scale_alibi.devworld import serve_world

    with serve_world(world_dir) as w:
        pids = [w.proc.pid, w.files.proc.pid]
        urls = [w.stac_url, w.files_url]
        assert all(_port_open(u) for u in urls)
        assert httpx.get(w.stac_url + "/collections").json()["collections"]
    assert not any(_port_open(u) for u in urls)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_build_is_cached(world_dir, tmp_path):
    from scale_alibi.contract.errors import UserError
    from scale_alibi.devworld import DEFAULT_WORLD, build_world

    t0 = time.perf_counter()
    assert build_world(world_dir, DEFAULT_WORLD) == world_dir
    assert time.perf_counter() - t0 < 1.0
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(UserError):
        build_world(tmp_path, DEFAULT_WORLD)


CURATE = [sys.executable, "-c", "import sys; from scale_alibi.cli.main import main; main(sys.argv[1:], prog_name='curate')"]


@pytest.mark.parametrize(
    "args",
    [
        ["--bbox", "1,2,3"],
        ["--bbox", "-101,35,-102,36"],
        ["--bbox", "a,b,c,d"],
        ["--bbox", "-120,30,-100,40"],  # too large
        ["--bbox", "10,50,10.01,50.01"],  # no NAIP outside North America
        ["--out-is-file"],
        ["--nonsense"],
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, args):
    f = tmp_path / "file.txt"
    f.write_text("x")
    if args == ["--out-is-file"]:
        argv = ["world", "build", "--out", str(f)]
    else:
        argv = ["world", "build", "--out", str(tmp_path / "w"), *args]
    r = subprocess.run(CURATE + argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "w").exists()


def test_cli_serve_prints_urls_and_stops_on_ctrl_c(world_dir):
    # Started with SIGINT ignored, as a shell's background job or some CI runners start it: Ctrl-C
    # must still stop it (Python keeps an inherited SIG_IGN unless the command installs its handler).
    p = subprocess.Popen(CURATE + ["world", "serve", str(world_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        stac = p.stdout.readline().split()[-1]
        files = p.stdout.readline().split()[-1]
        assert stac.startswith("http://127.0.0.1:") and files.startswith("http://127.0.0.1:")
        client = pystac_client.Client.open(stac)
        assert {c.id for c in client.get_collections()} == {"sentinel-2-l2a", "sentinel-1-rtc", "naip"}
    finally:
        p.send_signal(signal.SIGINT)
        # Generous: stopping may take each server's SIGTERM grace of 10 s, then its SIGKILL wait
        # (World.stop, FileServer.close: up to 40 s in all); on a loaded CI machine 20 s was too short.
        assert p.wait(timeout=60) == 0
    assert not _port_open(stac) and not _port_open(files)


def test_killed_owner_leaks_no_servers(world_dir):
    """Even when the owning process dies without cleanup (SIGKILL), both servers go with it."""
    code = (
        "import sys, threading; from scale_alibi.devworld import start_world\n"
        "box = {}\n"
        "t = threading.Thread(target=lambda: box.update(w=start_world(sys.argv[1])))\n"  # non-main thread
        "t.start(); t.join(); w = box['w']\n"
        "print(w.proc.pid, w.files.proc.pid, w.stac_url, w.files_url, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(world_dir)], stdout=subprocess.PIPE, text=True)
    try:
        stac_pid, files_pid, stac, files = p.stdout.readline().split()  # stac_pid: the guard
        assert _port_open(stac) and _port_open(files)
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_port_open(files) or _pid_alive(int(files_pid))):
        time.sleep(0.2)
    assert not _pid_alive(int(files_pid)) and not _port_open(files)
    while time.monotonic() < deadline and _pid_alive(int(stac_pid)):
        time.sleep(0.2)
    assert not _pid_alive(int(stac_pid)) and not _port_open(stac)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_cli_builds_a_small_world_in_one_zone(tmp_path):
    out = tmp_path / "w"
    argv = ["world", "build", "--out", str(out), "--bbox", "-100.505,36.0,-100.495,36.008"]
    r = subprocess.run(CURATE + argv, capture_output=True, text=True, timeout=300, env={**os.environ, "SCALE_ALIBI_WORLD_WORKERS": "1"})
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "world.json").read_text())
    assert meta["config"]["bbox"] == [-100.505, 36.0, -100.495, 36.008]
    for coll in ("sentinel-2-l2a", "sentinel-1-rtc", "naip"):
        feats = json.loads((out / "catalog" / f"{coll}-items.json").read_text())["features"]
        assert feats and {f["properties"]["proj:epsg"] % 100 for f in feats} == {14}
        for f in feats:
            for a in f["assets"].values():
                assert (out / "files" / a["href"].split("/", 1)[1]).is_file()
    r2 = subprocess.run(CURATE + argv, capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0 and "world" in r2.stdout  # cached: nothing rendered again
    assert json.loads((out / "world.json").read_text()) == meta


def test_hrefs_can_point_at_another_static_server_over_the_same_files(world_dir):
    """A benchmark serves the COGs from nginx: every asset href of the catalog names that server,
    with each file's path under world_dir/files (the oracle: the files on disk)."""
    import json
    import urllib.request

    from scale_alibi.devworld import serve_world

    elsewhere = "http://127.0.0.1:9"  # never contacted: only written into the hrefs
    with serve_world(world_dir, hrefs_url=elsewhere) as w:
        with urllib.request.urlopen(w.stac_url + "/search?limit=50", timeout=10) as r:
            items = json.load(r)["features"]
    hrefs = [a["href"] for it in items for a in it["assets"].values() if a["href"].startswith("http")]
    assert hrefs and all(h.startswith(elsewhere + "/") for h in hrefs)
    assert all((world_dir / "files" / h[len(elsewhere) + 1 :]).is_file() for h in hrefs)
