"""A loopback HTTP file server for COGs: Range requests, traffic counters and fault injection.

Honours single, multiple (multipart/byteranges) and suffix ranges, HEAD, 416; counts requests
and body bytes; can fail the next N requests (429/503/403, optionally after letting some through),
stall them (no answer at all), delay responses, require signed URLs and revoke tokens in use
(`?se=<unix expiry>&sig=<hmac>`, 403 when missing, forged or expired) like Azure SAS tokens.

It is also a token service shaped like Planetary Computer's (`GET TOKEN_PATH<account>/<container>`
answers `{"msft:expiry", "token"}`, the planetary-computer SDK's PC_SDK_SAS_URL points at it): a
token is valid for every file under its container (the first path segment), may require the
`Ocp-Apim-Subscription-Key` header (401 without it, 403 with a wrong one), and may expire sooner
than the expiry it announces (the SDK then keeps using a token the files refuse).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_CHUNK = 1 << 20


@dataclass
class _Fault:
    status: int  # 0: stall (say nothing for stall_s, then hang up)
    remaining: int
    path_contains: str | None = None
    after: int = 0  # matching requests to let through first
    stall_s: float = 0.0


@dataclass
class _Revocation:
    """Tokens seen on matching paths are refused once `after` signed requests have passed."""

    path_contains: str | None
    after: int
    seen: set = field(default_factory=set)


@dataclass(frozen=True)
class TokenPolicy:
    """How the token service answers: which containers need a subscription key, and token lifetimes."""

    key: str | None = None  # the subscription key required (None: tokens for anyone)
    key_containers: tuple[str, ...] | None = None  # containers that require it (None: all)
    ttl_s: float = 3600.0  # real lifetime of a token (its `se`)
    announced_ttl_s: float | None = None  # lifetime announced in msft:expiry (None: the real one)


@dataclass
class ServerState:
    """Counters and switches shared between the handler threads and the test."""

    root: Path
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    requests: int = 0
    bytes: int = 0
    faults: list = field(default_factory=list)
    slow_seconds: float = 0.0
    slow_remaining: int = 0
    signed: bool = False
    revocations: list = field(default_factory=list)
    tokens: TokenPolicy = field(default_factory=TokenPolicy)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def signature(self, path: str, expiry: int) -> str:
        """HMAC of an URL path and its expiry (what `sig` must be)."""
        return hmac.new(self.secret, f"{path}|{expiry}".encode(), hashlib.sha256).hexdigest()[:32]


CONTROL = "/__control__/"  # control endpoint of the child process; not counted, never faulted
TOKEN_PATH = "/api/sas/v1/token/"  # token service, as on planetarycomputer.microsoft.com; not counted, never faulted


def _pdeathsig() -> None:
    """In the child: die with the parent (Linux), so a killed test run leaks no server."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


def _child_setup():
    """preexec_fn for server children: die with the parent. Only from the main thread: the
    kernel signals when the forking *thread* exits, and preexec_fn is unsafe amid threads."""
    return _pdeathsig if threading.current_thread() is threading.main_thread() else None


def _watch_parent(ppid: int, stop) -> None:
    """In the child: shut down when the parent process is gone (covers non-main-thread starts)."""
    while os.getppid() == ppid:
        time.sleep(0.5)
    stop()


class FileServer:
    """Control handle of a file server running in a child process.

    A separate process, not a thread: GDAL reads in the caller's process may hold the GIL while
    they wait for the network, which would starve an in-process server.
    """

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None):
        self.root = Path(root).absolute()
        self._secret = secrets.token_bytes(16)
        self._sig = ServerState(self.root, secret=self._secret)
        cmd = [sys.executable, "-m", "scale_alibi.devworld.fileserver", "--root", str(self.root), "--host", host, "--port", str(port), "--secret", self._secret.hex()]
        # stderr to a file, never a pipe: an unread pipe fills up and blocks the server.
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True, preexec_fn=_child_setup())
        assert self.proc.stdout is not None  # stdout=PIPE above
        self._stdout = self.proc.stdout
        line = self._stdout.readline().decode().strip()
        if not line.startswith("PORT "):
            self.proc.kill()
            self.proc.wait()
            self._log.seek(0)
            raise RuntimeError(f"file server failed to start: {line} {self._log.read().decode(errors='replace')[-2000:]}")
        self.port = int(line.split()[1])
        self.url = f"http://{advertise or host}:{self.port}"
        self._control_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def _control(self, action: str, **params) -> dict:
        data = json.dumps(params).encode()
        req = urllib.request.Request(self._control_url + CONTROL + action, data=data, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    # -- counters ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """{"requests": int, "bytes": int} since start or the last reset (control calls excluded)."""
        return self._control("stats")

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._control("reset_stats")

    # -- faults -----------------------------------------------------------------------------
    def inject(self, status: int = 503, count: int = 1, path_contains: str | None = None, after: int = 0) -> None:
        """Fail the next `count` requests (optionally only paths containing a string) with `status`,
        once `after` matching requests have passed (a fault in the middle of a read)."""
        self._control("inject", status=int(status), count=int(count), path_contains=path_contains, after=int(after))

    def stall(self, seconds: float = 60.0, count: int = 1, path_contains: str | None = None) -> None:
        """Answer nothing to the next `count` matching requests for `seconds`, then hang up (a stalled server)."""
        self._control("inject", status=0, count=int(count), path_contains=path_contains, stall_s=float(seconds))

    def slow(self, seconds: float = 0.2, count: int = 1) -> None:
        """Delay the next `count` responses by `seconds` each."""
        self._control("slow", seconds=float(seconds), count=int(count))

    def require_signature(self, on: bool = True) -> None:
        """When on, requests without a valid, unexpired `se`/`sig` token get 403."""
        self._control("require_signature", on=bool(on))

    def revoke_tokens(self, path_contains: str | None = None, after: int = 0) -> None:
        """With signatures required: once `after` more signed requests to matching paths have
        passed, refuse (403) every token they used, as when a key is rotated in the middle of a read.
        A token signed afresh (another expiry) is accepted."""
        self._control("revoke_tokens", path_contains=path_contains, after=int(after))

    def token_service(self, key: str | None = None, key_containers: list[str] | None = None, ttl_s: float = 3600.0,
                      announced_ttl_s: float | None = None) -> None:
        """Set how the token service answers (see TokenPolicy); clear_faults restores the open default."""
        self._control("token_service", key=key, key_containers=key_containers, ttl_s=float(ttl_s),
                      announced_ttl_s=announced_ttl_s)

    @property
    def token_url(self) -> str:
        """The token service's base URL (the value for PC_SDK_SAS_URL)."""
        return self.url + TOKEN_PATH.rstrip("/")

    def clear_faults(self) -> None:
        """Drop pending faults, delays and revocations; stop requiring signatures or keys."""
        self._control("clear_faults")

    def sign_url(self, url: str, ttl_s: float = 3600.0) -> str:
        """Append a token valid for ttl_s seconds (negative: already expired) to one of our URLs."""
        parts = urllib.parse.urlsplit(url)
        expiry = int(time.time() + ttl_s)
        q = urllib.parse.parse_qsl(parts.query)
        q += [("se", str(expiry)), ("sig", self._sig.signature(parts.path, expiry))]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))

    def close(self) -> None:
        """Stop the child process (its listening socket closes with it)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stdout.close()
        self._log.close()


def _control(st: ServerState, action: str, params: dict) -> dict:
    """Apply a control action inside the server process."""
    with st.lock:
        if action == "reset_stats":
            st.requests = st.bytes = 0
        elif action == "inject":
            st.faults.append(_Fault(params["status"], params["count"], params.get("path_contains"),
                                    params.get("after", 0), params.get("stall_s", 0.0)))
        elif action == "slow":
            st.slow_seconds, st.slow_remaining = params["seconds"], params["count"]
        elif action == "require_signature":
            st.signed = params["on"]
        elif action == "revoke_tokens":
            st.revocations.append(_Revocation(params.get("path_contains"), params["after"]))
        elif action == "token_service":
            containers = params.get("key_containers")
            st.tokens = TokenPolicy(params.get("key"), tuple(containers) if containers is not None else None,
                                    params["ttl_s"], params.get("announced_ttl_s"))
        elif action == "clear_faults":
            st.tokens = TokenPolicy()
            st.faults.clear()
            st.revocations.clear()
            st.slow_remaining = 0
            st.signed = False
        elif action != "stats":
            raise KeyError(action)
        return {"requests": st.requests, "bytes": st.bytes}


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """[(start, end_inclusive)] of satisfiable ranges; None if the header is not a bytes range."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    out = []
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        try:
            if a == "":  # suffix: last N bytes
                n = int(b)
                if n <= 0:
                    continue
                out.append((max(0, size - n), size - 1))
            else:
                start = int(a)
                end = int(b) if b else size - 1
                if end < start:
                    return None
                if start < size:
                    out.append((start, min(end, size - 1)))
        except ValueError:
            return None
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    st: ServerState

    def log_message(self, fmt, *args):  # quiet: tests run thousands of requests
        pass

    def do_HEAD(self):
        self._quietly(True)

    def do_GET(self):
        self._quietly(False)

    def _quietly(self, head: bool) -> None:
        try:
            self._serve(head=head)
        except (BrokenPipeError, ConnectionResetError):  # client hung up mid-body (GDAL does)
            self.close_connection = True

    def do_POST(self):
        if not self.path.startswith(CONTROL):
            self._simple(405, b"method not allowed")
            return
        n = int(self.headers.get("Content-Length") or 0)
        params = json.loads(self.rfile.read(n) or b"{}")
        try:
            body = json.dumps(_control(self.st, self.path[len(CONTROL):], params)).encode()
        except KeyError:
            self._simple(404, b"unknown control action")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _count(self, nbytes: int) -> None:
        with self.st.lock:
            self.st.bytes += nbytes

    def _simple(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
            self._count(len(body))

    def _serve(self, head: bool) -> None:
        st = self.st
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.startswith(TOKEN_PATH):
            self._token(parts.path[len(TOKEN_PATH):], head)
            return
        with st.lock:
            st.requests += 1
            fault = None
            for f in st.faults:
                if f.remaining > 0 and (f.path_contains is None or f.path_contains in parts.path):
                    if f.after > 0:  # every pending fault counts the requests it lets through
                        f.after -= 1
                    elif fault is None:
                        f.remaining -= 1
                        fault = f
            st.faults = [f for f in st.faults if f.remaining > 0]
            delay = 0.0
            if st.slow_remaining > 0:
                st.slow_remaining -= 1
                delay = st.slow_seconds
            signed = st.signed
        if delay:
            time.sleep(delay)
        if fault is not None and fault.status == 0:
            time.sleep(fault.stall_s)
            self.close_connection = True
            return
        if fault is not None:
            msg = {429: b"Rate limit is exceeded.", 403: b"AuthenticationFailed: Signature not valid"}.get(
                fault.status, b"Service Unavailable")
            self._simple(fault.status, msg, {"Retry-After": "0"} if fault.status == 429 else None, head)
            return
        if signed and (not self._token_ok(parts) or self._revoked(parts)):
            self._simple(403, b"AuthenticationFailed: Signature not valid in the specified time frame", None, head)
            return
        rel = urllib.parse.unquote(parts.path).lstrip("/")
        path = (st.root / rel).resolve()
        if st.root not in path.parents or not path.is_file():
            self._simple(404, b"BlobNotFound", None, head)
            return
        size = path.stat().st_size
        ctype = "image/tiff" if path.suffix in (".tif", ".tiff") else "application/octet-stream"
        rng = self.headers.get("Range")
        if rng is None:
            self._send_whole(path, size, ctype, head)
            return
        ranges = _parse_ranges(rng, size)
        if ranges is None:  # malformed: ignore the header, as RFC 9110 allows
            self._send_whole(path, size, ctype, head)
            return
        if not ranges:
            self._simple(416, b"", {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}, head)
            return
        if len(ranges) == 1:
            a, b = ranges[0]
            self.send_response(206)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
            self.send_header("Content-Length", str(b - a + 1))
            self.end_headers()
            if not head:
                self._copy(path, a, b - a + 1)
            return
        boundary = secrets.token_hex(12)
        heads = [f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n".encode() for a, b in ranges]
        tail = f"--{boundary}--\r\n".encode()
        total = sum(len(h) + (b - a + 1) + 2 for h, (a, b) in zip(heads, ranges)) + len(tail)
        self.send_response(206)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(total))
        self.end_headers()
        if head:
            return
        for h, (a, b) in zip(heads, ranges):
            self.wfile.write(h)
            self._copy(path, a, b - a + 1)
            self.wfile.write(b"\r\n")
        self.wfile.write(tail)
        self._count(total - sum(b - a + 1 for a, b in ranges))

    def _send_whole(self, path: Path, size: int, ctype: str, head: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            self._copy(path, 0, size)

    def _copy(self, path: Path, start: int, length: int) -> None:
        with open(path, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                buf = fh.read(min(_CHUNK, left))
                if not buf:
                    break
                self.wfile.write(buf)
                left -= len(buf)
                self._count(len(buf))

    def _revoked(self, parts) -> bool:
        sig = dict(urllib.parse.parse_qsl(parts.query)).get("sig", "")
        with self.st.lock:
            for r in self.st.revocations:
                if r.path_contains is None or r.path_contains in parts.path:
                    if r.after <= 0 and sig in r.seen:
                        return True
                    if r.after > 0:
                        r.seen.add(sig)
                        r.after -= 1
        return False

    def _token_ok(self, parts) -> bool:
        q = dict(urllib.parse.parse_qsl(parts.query))
        try:
            expiry = int(q["se"])
        except (KeyError, ValueError):
            return False
        if q.get("sr") == "c":  # a container token from the token service
            scope = _container_scope(urllib.parse.unquote(parts.path).lstrip("/").split("/", 1)[0], q.get("skn", ""))
        else:  # a URL signed by sign_url
            scope = parts.path
        good = hmac.compare_digest(q.get("sig", ""), self.st.signature(scope, expiry))
        return good and expiry > time.time()

    def _token(self, rest: str, head: bool) -> None:
        """Answer a token request for `<account>/<container>` as Planetary Computer's token service does."""
        account, _, container = rest.strip("/").partition("/")
        if not account or not container or "/" in container:
            self._simple(404, b"Not Found", None, head)
            return
        with self.st.lock:
            policy = self.st.tokens
        if policy.key is not None and (policy.key_containers is None or container in policy.key_containers):
            given = self.headers.get("Ocp-Apim-Subscription-Key")
            if given is None:  # what API Management answers: 401 without a key, 403 with a wrong one
                self._simple(401, b'{"statusCode": 401, "message": "Access denied due to missing subscription key."}',
                             None, head)
                return
            if not hmac.compare_digest(given, policy.key):
                self._simple(403, b'{"statusCode": 403, "message": "Access denied due to invalid subscription key."}',
                             None, head)
                return
        now = time.time()
        expiry = int(now + policy.ttl_s)
        nonce = secrets.token_hex(6)  # two tokens issued in one second still differ, as real ones do
        sig = self.st.signature(_container_scope(container, nonce), expiry)
        token = urllib.parse.urlencode({"st": _iso(now), "se": str(expiry), "sp": "rl", "sr": "c", "skn": nonce,
                                        "sig": sig})
        announced = now + (policy.ttl_s if policy.announced_ttl_s is None else policy.announced_ttl_s)
        body = json.dumps({"msft:expiry": _iso(announced), "token": token}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _container_scope(container: str, nonce: str) -> str:
    """What a container token's `sig` signs (never a file path: those start with '/')."""
    return f"container:{container}:{nonce}"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: serve --root on --host:--port, print 'PORT n', run until SIGTERM."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--secret", required=True)
    a = ap.parse_args(argv)
    state = ServerState(Path(a.root).absolute(), secret=bytes.fromhex(a.secret))

    class Handler(_Handler):
        st = state

    httpd = ThreadingHTTPServer((a.host, a.port), Handler)
    httpd.daemon_threads = True
    def stop(*_):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=_watch_parent, args=(os.getppid(), stop), daemon=True).start()
    print(f"PORT {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
