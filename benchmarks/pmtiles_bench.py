"""PMTiles archives at scale: `scale_alibi.contract.archive` (this project's writer and reader) vs the `pmtiles`
package's reference Writer and Reader, on the same tiles.

    python benchmarks/pmtiles_bench.py [--tiles 1000000] [--lookups 20000] [--no-reference]

Tiles are a contiguous block at zoom 17 with 64-byte payloads (the directory, not the tile
bytes, is what costs memory and time). Prints, for each writer: seconds, peak Python heap while
writing (tracemalloc: numpy arrays included, the tile bytes themselves are streamed to disk)
and bytes per tile; for each reader: open time, peak heap at open and random look-ups per second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from pmtiles.reader import MmapSource, Reader
from pmtiles.tile import Compression, TileType, tileid_to_zxy
from pmtiles.writer import Writer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scale_alibi.contract.archive import Archive, ArchiveWriter, tile_ids  # noqa: E402

ZOOM = 17
HEADER = {"min_zoom": ZOOM, "max_zoom": ZOOM, "min_lon_e7": 0, "min_lat_e7": 0, "max_lon_e7": 1, "max_lat_e7": 1,
          "center_zoom": ZOOM, "center_lon_e7": 0, "center_lat_e7": 0}


def payload(i: int) -> bytes:
    return i.to_bytes(8, "little") * 8  # 64 bytes, distinct per tile (no de-duplication possible)


def measure(fn):
    """(result, seconds, peak traced heap bytes) of fn()."""
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def tiles(ids: np.ndarray):
    """(tile id, payload) pairs, without a Python int per tile alive at once (the heap is measured)."""
    for start in range(0, len(ids), 65536):
        for k, t in enumerate(ids[start : start + 65536].tolist(), start):
            yield t, payload(k)


def write_ours(path: Path, ids: np.ndarray) -> None:
    with open(path, "wb") as f:
        w = ArchiveWriter(f)
        for t, data in tiles(ids):
            w.add(t, data)
        w.finish(HEADER, {"name": "bench"})


def write_reference(path: Path, ids: np.ndarray) -> None:
    with open(path, "wb") as f:
        w = Writer(f)
        for t, data in tiles(ids):
            w.write_tile(t, data)
        w.finalize({**HEADER, "tile_type": TileType.PNG, "tile_compression": Compression.NONE}, {"name": "bench"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=20_000)
    ap.add_argument("--no-reference", action="store_true", help="skip the reference Writer/Reader")
    args = ap.parse_args()
    side = int(np.ceil(np.sqrt(args.tiles)))
    xs, ys = np.meshgrid(np.arange(side) + 20_000, np.arange(side) + 40_000)
    ids = np.sort(tile_ids(ZOOM, xs.ravel(), ys.ravel())[: args.tiles])
    probe = np.random.default_rng(0).choice(ids, size=min(args.lookups, len(ids)), replace=False)
    zxy = [tileid_to_zxy(int(t)) for t in probe.tolist()]
    print(f"{len(ids):,} tiles at zoom {ZOOM}, 64-byte payloads")
    with tempfile.TemporaryDirectory() as tmp:
        writers = [("scale_alibi.contract.archive", write_ours)] + ([] if args.no_reference else [("pmtiles reference", write_reference)])
        for name, write in writers:
            path = Path(tmp) / f"{name.split()[0]}.pmtiles"
            _, s, peak = measure(lambda: write(path, ids))
            print(f"write  {name:18s} {s:8.1f} s  peak heap {peak / 2**20:8.1f} MiB  ({peak / len(ids):6.1f} B/tile)  "
                  f"file {path.stat().st_size / 2**20:.1f} MiB")
        ours = Path(tmp) / "contract.archive.pmtiles"
        archive, s, peak = measure(lambda: Archive.open(ours))
        t0 = time.perf_counter()
        for z, x, y in zxy:
            assert archive.read(z, x, y) is not None
        rate = len(zxy) / (time.perf_counter() - t0)
        print(f"read   {'contract.archive':18s} open {s * 1e3:6.1f} ms  peak heap {peak / 2**20:6.1f} MiB  {rate:9,.0f} look-ups/s")
        archive.close()
        if not args.no_reference:
            with open(ours, "rb") as f:
                reader, s, peak = measure(lambda: Reader(MmapSource(f)))
                n = min(len(zxy), 50)  # it re-parses the whole root directory at every look-up: slow
                t0 = time.perf_counter()
                for z, x, y in zxy[:n]:
                    assert reader.get(z, x, y) is not None
                rate = n / (time.perf_counter() - t0)
                print(f"read   {'pmtiles reference':18s} open {s * 1e3:6.1f} ms  peak heap {peak / 2**20:6.1f} MiB  {rate:9,.0f} look-ups/s")


if __name__ == "__main__":
    main()
