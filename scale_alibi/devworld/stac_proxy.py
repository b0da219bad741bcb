"""A loopback proxy in front of a STAC API that serves its searches the way Planetary Computer sometimes did.

Searches can be answered 503, search pages can lose their `next` link (a full page that ends the results early, as
planetary-computer-apis#274 served for days) and can be slowed down; every search is counted, and so is
the largest number in flight at once, so a client's paging and its concurrency can be checked. Anything
else passes through unchanged; the upstream's own address in answers is rewritten to the proxy's.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CatalogProxy:
    """`CatalogProxy(upstream).url` is a STAC API URL; settings and counters are plain attributes."""

    def __init__(self, upstream: str, host: str = "127.0.0.1"):
        self.upstream = upstream.rstrip("/")
        self.drop_next_links = 0  # search pages that lose their `next` link; -1: every one
        self.search_delay_s = 0.0  # each search answer waits this long
        self.fail_searches = 0  # the first this many searches are answered 503
        self.searches = 0  # search requests (each page is one)
        self.dropped = 0  # `next` links removed
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self) -> CatalogProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _search_started(self) -> None:
        with self._lock:
            self.searches += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _search_ended(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _strip_next(self, payload: bytes) -> bytes:
        """`payload` without its `next` link while drop_next_links allows."""
        with self._lock:
            if self.drop_next_links == 0:
                return payload
        try:
            page = json.loads(payload)
        except ValueError:
            return payload
        links = page.get("links") or []
        kept = [link for link in links if link.get("rel") != "next"]
        if len(kept) == len(links):
            return payload
        with self._lock:
            if self.drop_next_links == 0:
                return payload
            if self.drop_next_links > 0:
                self.drop_next_links -= 1
            self.dropped += 1
        page["links"] = kept
        return json.dumps(page).encode()


def _handler(proxy: CatalogProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: a build makes many requests
            pass

        def do_GET(self):
            self._forward(None)

        def do_POST(self):
            self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def _forward(self, body: bytes | None) -> None:
            search = self.path.startswith("/search")
            if search:
                proxy._search_started()
                if proxy.searches <= proxy.fail_searches:
                    proxy._search_ended()
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            try:
                if search and proxy.search_delay_s:
                    time.sleep(proxy.search_delay_s)
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": self.headers.get("Content-Type") or "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        status, payload, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
                except urllib.error.HTTPError as e:
                    status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
                payload = payload.replace(proxy.upstream.encode(), proxy.url.encode())
                if search and status == 200:
                    payload = proxy._strip_next(payload)
            finally:
                if search:
                    proxy._search_ended()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
