"""The driver's memory to seal a release: the manifest streamed from done records, column of metatiles
by column (the build's way), vs every row held until the end (the anchor: how the build worked
before, and the obvious way), measured in the same run with tracemalloc at two release sizes.

    python benchmarks/manifest_bench.py [--rows 16000 64000] [--column 1024]

Done records are written by scale_alibi.curate.pipeline.local_output.LocalOutput into a temporary release, 64
rows per metatile (8x8 tiles) and `--column` rows per column of metatiles, rows shaped as a build's
(benchmarks/scale_bench.py `manifest_row`). Streaming should stay flat as the release grows; holding
grows with it (scale_bench.py projects the held bytes to CONUS z15).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import mercantile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_bench import hex_strings, manifest_row  # noqa: E402

from scale_alibi.contract.release import manifest_bytes, write_manifest_batches  # noqa: E402
from scale_alibi.curate.pipeline.local_output import LocalOutput  # noqa: E402
from scale_alibi.curate.pipeline.manifest import (  # noqa: E402
    manifest_batches,
    manifest_columns,
    manifest_table,
    summarize,
)
from scale_alibi.curate.pipeline.tiling import metatile_of  # noqa: E402

PER_METATILE = 64
SCENE_TILES = {"naip": 32, "s2": 4096, "s1": 16384}


def make_records(root: Path, rows: int, column: int) -> tuple[LocalOutput, list]:
    """A release under `root` with done records of `rows` rows, `column` rows per metatile column."""
    output = LocalOutput(root, "bench")
    output.check_writable()
    hexes = hex_strings(rows * 7)
    done = []
    for k in range(0, rows, PER_METATILE):
        chunk = [manifest_row(i, hexes) for i in range(k, min(rows, k + PER_METATILE))]
        for j, row in enumerate(chunk):  # lay metatiles out as columns of `column` rows, 8 tiles wide
            i = k + j
            row["x"], row["y"] = 8 * (i // column) + i % 8, (i % column) // 8
            # Scenes cover many tiles (at z15: a NAIP quarter-quad ~40, an S2 granule ~10^4, an S1 scene more).
            for layer, tiles_per_scene in SCENE_TILES.items():
                row[f"{layer}_items"] = [f"{layer}-scene-{i // tiles_per_scene:08d}"]
        mt = metatile_of(mercantile.Tile(chunk[0]["x"], chunk[0]["y"], 15), 3)
        output.write_record(mt, {"metatile": [mt.z, mt.x, mt.y], "rows": chunk, "files": []})
        done.append(mt)
    return output, done


def held(output: LocalOutput, done: list, sink: Path) -> None:
    """Every row kept until the end, then one table and one write."""
    rows = [row for mt in done for row in output.read_record(mt)["rows"]]
    sink.write_bytes(manifest_bytes(manifest_table(rows), {"release": "bench"}))


def streamed(output: LocalOutput, done: list, sink: Path) -> None:
    """The build's way: a summary per metatile while it runs, then the manifest column by column."""
    summaries = {mt: summarize(output.read_record(mt)) for mt in done}
    with open(sink, "wb") as f:
        n = write_manifest_batches(f, manifest_batches(output, [mt for mt in done if summaries[mt].rows]),
                                   manifest_columns(), {"release": "bench"})
    assert n == sum(s.rows for s in summaries.values())


def measure(mode: str, root: Path, trace: bool) -> dict:
    """Run `mode` in this (fresh) process: with `trace`, its peak memory (Python heap by tracemalloc +
    the Arrow pool's peak); without, its seconds (tracemalloc slows every allocation several-fold)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    output = LocalOutput(root, "bench")
    done = sorted(output.done_metatiles())
    sink = root / f"{mode}.parquet"
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    {"held": held, "streamed": streamed}[mode](output, done, sink)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory() if trace else 0
    tracemalloc.stop()
    return {"peak": peak, "seconds": seconds, "rows": pq.read_metadata(sink).num_rows}


def in_child(mode: str, root: Path) -> dict:
    """Seconds from one fresh process, peak memory from another."""
    def run(*extra: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--measure", mode, "--root", str(root), *extra],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    timed, traced = run(), run("--trace")
    return {**traced, "seconds": timed["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[16_000, 64_000])
    ap.add_argument("--column", type=int, default=1024, help="rows per column of metatiles")
    ap.add_argument("--measure", choices=["held", "streamed"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root, args.trace)))
        return
    print("sealing the manifest: peak memory (Python heap + Arrow pool) and seconds, each from a fresh process")
    print(f"{'rows':>8} {'held (anchor) MiB':>18} {'streamed MiB':>13} {'ratio':>8} {'B/row held':>11} "
          f"{'B/row streamed':>15} {'manifest MiB':>13} {'s held/streamed':>16}")
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            make_records(Path(tmp), n, args.column)
            h, s = in_child("held", Path(tmp)), in_child("streamed", Path(tmp))
            manifest = (Path(tmp) / "streamed.parquet").stat().st_size
        assert h["rows"] == s["rows"] == n, (h, s)
        print(f"{n:>8,} {h['peak'] / 2**20:>18,.1f} {s['peak'] / 2**20:>13,.1f} {s['peak'] / h['peak']:>7.3f}x "
              f"{h['peak'] / n:>11,.0f} {s['peak'] / n:>15,.0f} {manifest / 2**20:>13,.1f} "
              f"{h['seconds']:>7.1f}/{s['seconds']:<7.1f}")


if __name__ == "__main__":
    main()
