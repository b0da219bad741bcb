"""curate build under network faults and empty results: retried and throttled catalog searches
(through a real proxy in front of the world's STAC server), timeouts of a stalled COG server and of
an unanswering catalog, 403s mid-read and for good, bugs that are not network faults, and
releases that would be empty."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from shapely.geometry import box

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import MANIFEST_NAME, Release, manifest_metadata
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request

QUIET = {"scheduler": "synchronous", "progress": False, "echo": lambda m: None}


def _central(world, frac: float = 0.3):
    w, s, e, n = world.bbox
    lo, hi = 0.5 - frac / 2, 0.5 + frac / 2
    return box(w + lo * (e - w), s + lo * (n - s), w + hi * (e - w), s + hi * (n - s))


@pytest.fixture(scope="module")
def tiny(world, tmp_path_factory):
    """A reference z16 build of the middle of the world (12 triplets, 2 metatiles): (region, Release)."""
    root = tmp_path_factory.mktemp("tiny")
    region = _central(world)
    return region, _build(world, root, region)


def _build(world, root: Path, region, catalog: str | None = None, datetime: str | None = None, **run) -> Release:
    request = resolve_request(zoom=16, region=region, release="tiny", catalog=catalog or world.stac_url,
                              datetime=datetime)
    build_release(root, request, RunOptions(**{"signer": "none", **QUIET, **run}))
    return Release(root, "tiny")


def _tiles(release: Release) -> dict[str, bytes]:
    return {str(p.relative_to(release.path)): p.read_bytes() for p in sorted(release.path.rglob("*.png"))}


def _assert_same_release(got: Release, ref: Release, catalog_differs: bool = False) -> None:
    """Byte-identical tiles and manifest rows; metadata equal (but for the catalog URL when it differs)."""
    assert _tiles(got) == _tiles(ref)
    a, b = got.read_manifest(), ref.read_manifest()
    assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))
    ma, mb = manifest_metadata(a), manifest_metadata(b)
    if catalog_differs:
        ma.pop("catalog"), mb.pop("catalog")
    assert ma == mb
    if not catalog_differs:
        assert (got.path / MANIFEST_NAME).read_bytes() == (ref.path / MANIFEST_NAME).read_bytes()


def _victim(ref: Release) -> str:
    """A NAIP scene id the reference release used (its COG paths contain it)."""
    return ref.read_manifest().to_pylist()[0]["naip_items"][0]


# ------------------------------------------------------------------ a throttling proxy in front of the catalog

@dataclass
class Proxy:
    """A loopback HTTP proxy to one upstream that answers scripted faults to searches, then passes through."""

    upstream: str
    faults: list = field(default_factory=list)  # (status, headers) answered to the next searches, in order
    log: list = field(default_factory=list)  # (monotonic time, method, path, status)
    url: str = ""


def _start_proxy(upstream: str, faults: list) -> tuple[Proxy, ThreadingHTTPServer]:
    proxy = Proxy(upstream.rstrip("/"), list(faults))
    host, port = proxy.upstream.split("//", 1)[1].split(":")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                fault = proxy.faults.pop(0) if self.path.split("?")[0].endswith("/search") and proxy.faults else None
            if fault is not None:
                status, headers = fault
                proxy.log.append((time.monotonic(), self.command, self.path, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            r = conn.getresponse()
            # The catalog's links name its own address: point them back at the proxy.
            data = r.read().replace(proxy.upstream.encode(), proxy.url.encode())
            proxy.log.append((time.monotonic(), self.command, self.path, r.status))
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return proxy, server


def test_searches_answered_503_twice_and_429_with_retry_after_still_give_the_same_release(world, tiny, tmp_path):
    region, ref = tiny
    faults = [(503, {}), (503, {}), (429, {"Retry-After": "1"})]
    proxy, server = _start_proxy(world.stac_url, faults)
    try:
        got = _build(world, tmp_path, region, catalog=proxy.url)
    finally:
        server.shutdown()
        server.server_close()
    searches = [entry for entry in proxy.log if entry[2].split("?")[0].endswith("/search")]
    assert [s[3] for s in searches[:3]] == [503, 503, 429] and all(s[3] == 200 for s in searches[3:])
    assert searches[3][0] - searches[2][0] >= 1.0  # Retry-After was honoured
    _assert_same_release(got, ref, catalog_differs=True)


def test_an_unanswering_catalog_is_reported_as_a_catalog_timeout_quickly(tmp_path):
    from scale_alibi.cli.main import main

    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        result = CliRunner().invoke(main, ["build", "--bbox", "0,0,0.01,0.01", "--zoom", "15", "--catalog", url,
                                           "--timeout", "0.5", "--out", str(tmp_path), "--signer", "none",
                                           "--scheduler", "synchronous", "--no-progress"])
        elapsed = time.monotonic() - t0
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert f"cannot reach STAC catalog {url} (no answer within 0.5 s" in errors[0]
    assert elapsed < 10, elapsed


# ------------------------------------------------------------------------------------------ COG reads

def test_a_stalled_cog_server_fails_the_metatile_within_the_timeout(world, tiny, tmp_path, monkeypatch):
    import scale_alibi.curate.reader as reader

    region, ref = tiny
    monkeypatch.setattr(reader, "BACKOFF_S", 0.01)
    world.files.stall(seconds=60, count=10_000, path_contains=_victim(ref))
    t0 = time.monotonic()
    with pytest.raises(UserError, match="failed after retries") as err:
        _build(world, tmp_path, region, timeout_s=1)
    elapsed = time.monotonic() - t0
    assert "timed out: the server sent no data for 1 s" in str(err.value)
    # Each of the (TIMEOUT_RETRIES + 1) attempts waits the timeout once per GDAL try.
    attempts = (reader.TIMEOUT_RETRIES + 1) * (int(reader.GDAL_ENV["GDAL_HTTP_MAX_RETRY"]) + 1)
    assert elapsed < 2 * attempts + 10, elapsed


def test_a_403_in_the_middle_of_a_read_is_recognised_and_re_signed(world, tiny, tmp_path, monkeypatch):
    import scale_alibi.curate.reader as reader

    region, ref = tiny
    monkeypatch.setattr(reader, "BACKOFF_S", 0.01)
    victim = _victim(ref)
    calls = defaultdict(int)

    def signer(href: str) -> str:
        calls[href] += 1
        return world.sign(href, ttl_s=3600 + calls[href])  # each signature its own expiry: a new token

    gdal_tries = int(reader.GDAL_ENV["GDAL_HTTP_MAX_RETRY"]) + 1
    world.files.require_signature(True)
    # The first open of the scene is answered 503 (every GDAL try); the next one succeeds (two
    # requests) and then the token it used is revoked: the read that follows gets 403.
    world.files.inject(status=503, count=gdal_tries, path_contains=victim)
    world.files.revoke_tokens(path_contains=victim, after=2)
    got = _build(world, tmp_path, region, signer=signer)
    [href] = [h for h in calls if victim in h]
    assert calls[href] >= 2  # signed again after the 403
    _assert_same_release(got, ref)


def test_a_permanent_403_fails_fast_with_advice_about_the_key(world, tiny, tmp_path, monkeypatch):
    region, ref = tiny
    world.files.inject(status=403, count=100_000, path_contains=_victim(ref))
    t0 = time.monotonic()
    with pytest.raises(UserError, match="HTTP 403") as err:
        _build(world, tmp_path, region)
    message = str(err.value)
    assert "subscription key" in message and "rerun" not in message
    assert time.monotonic() - t0 < 10
    assert not Release(tmp_path, "tiny").is_finished


def test_a_bug_in_a_metatile_is_raised_as_it_is_not_retried_as_a_network_fault(world, tiny, tmp_path, monkeypatch):
    import scale_alibi.curate.pipeline.metatile as metatile  # where cut_metatile looks up describe_choice

    region, _ = tiny

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(metatile, "describe_choice", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        _build(world, tmp_path, region)


# ------------------------------------------------------------------------------------------ empty results

def test_a_region_outside_the_catalog_is_an_error_unless_allowed(world, tmp_path):
    outside = box(10.0, 10.0, 10.01, 10.01)
    with pytest.raises(UserError, match="no scenes over the region .*outside the catalog"):
        _build(world, tmp_path, outside)
    assert not Release(tmp_path, "tiny").is_finished
    empty = _build(world, tmp_path, outside, allow_empty=True)
    assert empty.is_finished and empty.read_manifest().num_rows == 0


def test_a_date_window_without_scenes_is_an_error_naming_the_window(world, tiny, tmp_path):
    region, _ = tiny
    with pytest.raises(UserError, match=r"no s1/s2 scenes over the region pass the filters \(--datetime 1990"):
        _build(world, tmp_path, region, datetime="1990-01-01/1990-12-31")
    assert not Release(tmp_path, "tiny").is_finished


# ------------------------------------------------------------------------------------------ disk full

def _can_mount_tmpfs() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_while_writing_the_manifest_is_one_error_line_and_a_rerun_finishes(world, tiny, tmp_path):
    """The release directory is a full tmpfs (in a user+mount namespace); its tiles and build state
    live beside it under --out (symlinks), so only the manifest meets the kernel's ENOSPC."""
    import shlex
    import subprocess
    import sys

    if not _can_mount_tmpfs():
        pytest.skip("needs `unshare -rm` and tmpfs mounts in a user namespace")
    region, ref = tiny
    out, store, release = tmp_path / "out", tmp_path / "out" / "store", tmp_path / "out" / "tiny"
    for name in (".build", "s1", "s2", "naip"):
        (store / name).mkdir(parents=True)
    release.mkdir()
    w, s, e, n = region.bounds
    cli = [sys.executable, "-c", "from scale_alibi.cli.main import main; main()", "build", "--bbox", f"{w!r},{s!r},{e!r},{n!r}",
           "--zoom", "16", "--release", "tiny", "--out", str(out), "--catalog", world.stac_url, "--signer", "none",
           "--scheduler", "synchronous", "--no-progress"]
    links = " && ".join(f"ln -s {shlex.quote(str(store / name))} {shlex.quote(str(release / name))}"
                        for name in (".build", "s1", "s2", "naip"))
    script = f"""
        mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(release))} && {links}
        cat /dev/zero > {shlex.quote(str(release / 'filler'))} 2>/dev/null  # until the disk is full
        {shlex.join(cli)} 2> {shlex.quote(str(tmp_path / 'full.err'))}; echo "full=$?"
        echo "left=$(ls -A {shlex.quote(str(release))} | tr '\n' ' ')"
        rm {shlex.quote(str(release / 'filler'))}
        {shlex.join(cli)} 2> {shlex.quote(str(tmp_path / 'freed.err'))}; echo "freed=$?"
        cp {shlex.quote(str(release / 'manifest.parquet'))} {shlex.quote(str(store / 'manifest.parquet'))}
    """
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    said = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    errors = [ln for ln in (tmp_path / "full.err").read_text().splitlines() if ln.startswith("error:")]
    assert said.get("full") == "2", (done.stdout, done.stderr, (tmp_path / "full.err").read_text()[-2000:])
    assert len(errors) == 1 and "No space left on device" in errors[0] and "manifest.parquet" in errors[0]
    assert "Traceback" not in (tmp_path / "full.err").read_text()
    assert sorted(said["left"].split()) == [".build", "filler", "naip", "s1", "s2"]  # no manifest, no temp file
    assert said.get("freed") == "0", (tmp_path / "freed.err").read_text()[-2000:]
    got = Release(tmp_path / "out", "store")
    assert _tiles(got) == _tiles(ref)
    assert got.read_manifest().replace_schema_metadata(None).equals(ref.read_manifest().replace_schema_metadata(None))
