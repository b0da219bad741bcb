"""A real STAC API (`rustac serve`, in-memory) over hand-made items, for unit tests of search and plan."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scale_alibi.devworld.serve import rustac_executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_items(tmp: Path, collections: list[str], items: list[dict]) -> Iterator[str]:
    """The URL of `rustac serve` holding `collections` (open extents) and `items`; stopped on exit."""
    hrefs = []
    for collection in collections:
        path = tmp / f"{collection}.json"
        path.write_text(json.dumps({
            "type": "Collection", "stac_version": "1.0.0", "id": collection, "description": collection,
            "license": "other", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
        }))
        hrefs.append(str(path))
    (tmp / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    port = free_port()
    # rustac: a core dependency, found the way the product finds it (never skipped)
    server = subprocess.Popen([rustac_executable(), "serve", "--addr", f"127.0.0.1:{port}", *hrefs,
                               str(tmp / "items.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
