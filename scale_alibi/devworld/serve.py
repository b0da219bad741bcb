"""serve_world: the world's COGs behind the Range file server and its catalog behind `rustac serve`."""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scale_alibi.contract.errors import UserError
from scale_alibi.devworld.build import COLLECTIONS, load_config
from scale_alibi.devworld.config import WorldConfig
from scale_alibi.devworld.fileserver import FileServer, _child_setup
from scale_alibi.devworld.stac import HREF_PREFIX, REQUIRES_ACCOUNT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rustac_executable() -> str:
    """Path of the `rustac` command: beside this interpreter first (a virtualenv's scripts need
    not be on PATH), then on PATH; a UserError naming the install command if neither has it."""
    beside = Path(sys.executable).parent / "rustac"
    exe = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("rustac")
    if exe is None:
        raise UserError("the `rustac` command is missing; install it with `pip install rustac`")
    return exe


class World:
    """A served world: STAC API URL, file server URL and control, and a URL signer."""

    def __init__(self, world_dir: Path, cfg: WorldConfig, files: FileServer, stac_url: str, proc: subprocess.Popen, tmp: Path):
        self.dir, self.config, self.files = world_dir, cfg, files
        self.files_url, self.stac_url = files.url, stac_url
        self.proc, self._tmp = proc, tmp

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """The world's lon/lat bbox (W, S, E, N)."""
        return self.config.bbox

    def sign(self, obj: Any, ttl_s: float = 3600.0) -> Any:
        """Stand-in for planetary_computer.sign: a signed copy of an href, asset, item or item dict.

        Like the real signer, only this file server's hrefs are signed, and an href that already
        carries a token is returned unchanged (re-sign from the unsigned href).
        """
        if isinstance(obj, str):
            return self._sign_href(obj, ttl_s)
        if isinstance(obj, dict):
            out = copy.deepcopy(obj)
            for asset in (out.get("assets") or {}).values():
                asset["href"] = self._sign_href(asset["href"], ttl_s)
            if "href" in out and "assets" not in out:
                out["href"] = self._sign_href(out["href"], ttl_s)
            return out
        if hasattr(obj, "assets"):  # pystac.Item
            out = obj.clone()
            for asset in out.assets.values():
                asset.href = self._sign_href(asset.href, ttl_s)
            return out
        if hasattr(obj, "href"):  # pystac.Asset
            out = obj.clone()
            out.href = self._sign_href(out.href, ttl_s)
            return out
        raise TypeError(f"cannot sign {type(obj).__name__}")

    def sign_inplace(self, obj: Any, ttl_s: float = 3600.0) -> Any:
        """Stand-in for planetary_computer.sign_inplace (usable as pystac_client's `modifier=`)."""
        if isinstance(obj, dict):  # an item dict, or an ItemCollection dict
            for it in obj.get("features", [obj]):
                for asset in (it.get("assets") or {}).values():
                    asset["href"] = self._sign_href(asset["href"], ttl_s)
            return obj
        items = getattr(obj, "items", None)
        for it in items if isinstance(items, list) else [obj]:
            for asset in getattr(it, "assets", {}).values():
                asset.href = self._sign_href(asset.href, ttl_s)
        return obj

    def _sign_href(self, href: str, ttl_s: float) -> str:
        if not href.startswith(self.files_url + "/"):
            return href
        if "se" in dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(href).query)):
            return href
        return self.files.sign_url(href, ttl_s)

    def stop(self) -> None:
        """Stop both servers and remove the served catalog copy."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.files.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _write_served_catalog(world_dir: Path, files_url: str, tmp: Path) -> list[str]:
    hrefs = []
    for cid in COLLECTIONS:
        src = world_dir / "catalog"
        coll = json.loads((src / f"{cid}.json").read_text())
        coll["msft:requires_account"] = cid in REQUIRES_ACCOUNT  # set when served: a cached world gets it too
        (tmp / f"{cid}.json").write_text(json.dumps(coll))
        text = (src / f"{cid}-items.json").read_text().replace(HREF_PREFIX, files_url + "/")
        (tmp / f"{cid}-items.json").write_text(text)
        hrefs += [str(tmp / f"{cid}.json"), str(tmp / f"{cid}-items.json")]
    return hrefs


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rustac serve exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/collections", timeout=2) as r:
                if r.status == 200 and len(json.load(r).get("collections", [])) >= len(COLLECTIONS):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"rustac serve did not answer on {url} within {timeout:.0f} s")


def start_world(world_dir: str | os.PathLike, host: str = "127.0.0.1", stac_port: int = 0, files_port: int = 0, advertise: str | None = None,
                hrefs_url: str | None = None) -> World:
    """Start both servers (free loopback ports unless given); call .stop() when done.

    host: address to bind; advertise: host name clients use in URLs and hrefs (default: host;
    give it when binding 0.0.0.0, e.g. a docker-compose service name). hrefs_url: the catalog's
    asset hrefs point there instead of at the world's file server (a static server over
    `world_dir/files` that honours Range requests, e.g. nginx: benchmarks whose file server
    must cost no CPU; the world's faults and signatures then do not apply).
    """
    public = advertise or host
    world_dir = Path(world_dir).absolute()
    cfg = load_config(world_dir)
    exe = rustac_executable()
    files = FileServer(world_dir / "files", host=host, port=files_port, advertise=public)
    tmp = Path(tempfile.mkdtemp(prefix="world-stac-"))
    try:
        hrefs = _write_served_catalog(world_dir, hrefs_url or files.url, tmp)
        for attempt in range(3):
            port = stac_port or _free_port()
            url = f"http://{public}:{port}"
            log = open(tmp / "rustac.log", "wb")  # a file, not a pipe: unread pipes fill and block
            cmd = [sys.executable, "-m", "scale_alibi.devworld.guard", exe, "serve", "--addr", url, "--bind", f"{host}:{port}", *hrefs]
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, preexec_fn=_child_setup())
            log.close()
            try:
                local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
                _wait_ready(local, proc, tmp / "rustac.log")
                break
            except RuntimeError:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if attempt == 2 or stac_port:
                    raise
    except BaseException:
        files.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    w = World(world_dir, cfg, files, url, proc, tmp)
    _LIVE.add(w)
    return w


_LIVE: weakref.WeakSet[World] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop worlds still running at interpreter exit (a caller forgot .stop())."""
    for w in list(_LIVE):
        with contextlib.suppress(Exception):
            w.stop()


@contextlib.contextmanager
def serve_world(world_dir: str | os.PathLike, host: str = "127.0.0.1", **kw) -> Iterator[World]:
    """Context manager: both servers on free loopback ports, stopped on exit."""
    w = start_world(world_dir, host=host, **kw)
    try:
        yield w
    finally:
        w.stop()
