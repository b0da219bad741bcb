"""Loader throughput: triplets/s as tensors streamed from `curate serve` vs read + decoded from local disk.

    python benchmarks/loader_bench.py [--data OUT --release NAME] [--triplets 256] [--workers 2]

Both sides use the same DataLoader (same workers, batch size, collate and PNG decoder); the
anchor reads each triplet's seven PNGs straight from the release directory, the project streams
them as WebDataset shards over loopback HTTP from a server subprocess (which competes for the
same cores, as it would on a single training node). Runs alternate and the best of --repeats is
kept for each, so background noise hits both alike. Goal: the server path >= 85% of local disk.

Without --data, a release of --triplets synthetic triplets (smooth, compressible 256 px imagery,
~130 KB PNGs, like textured imagery) is written to a temporary directory first. The loader's
consumption in MB/s is printed too: the server's shard benchmark should deliver well above it.
So is the CPU each side spends a triplet, summed over every process it runs (main, workers,
server): on a busy machine the rates say little, the CPU ratio much more.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scale_alibi.contract.release import HIRES_NAMES, Release, content_hash, write_manifest  # noqa: E402
from scale_alibi.contract.tiles import tile_ground_size_m  # noqa: E402
from scale_alibi.model.data.decode import decode_triplet  # noqa: E402
from scale_alibi.model.data.loader import TripletStream, collate_triplets, make_loader  # noqa: E402


def synthetic_png(rng: np.random.Generator, size: int = 256) -> bytes:
    """A smooth, texture-like RGB tile (bilinear-upsampled noise, grain, a gradient), PNG at zlib level 1."""
    import imagecodecs

    small = torch.from_numpy(rng.random((1, 3, size // 16, size // 16)))
    img = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    img = img * 180 + rng.normal(0, 4, img.shape) + np.linspace(0, 60, size)[None, :, None]
    return imagecodecs.png_encode(np.ascontiguousarray(img.clip(0, 255).astype(np.uint8)), level=1)


def make_release(root: Path, n: int, name: str = "bench") -> Release:
    """A finished release of n synthetic triplets (all train)."""
    rng = np.random.default_rng(0)
    rel = Release(root, name)
    rows = []
    for i in range(n):
        z, x, y = 14, 4600 + i % 32, 6200 + i // 32
        h = {}
        for member, path in rel.triplet_paths(z, x, y).items():
            data = synthetic_png(rng)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            h[member] = content_hash(data)
        rows.append({"z": z, "x": x, "y": y, "split": "train", "hash_s1": h["s1"], "hash_s2": h["s2"],
                     "hash_naip": h["naip"], "hash_naip_hires": [h[k] for k in HIRES_NAMES]})
    schema = pa.schema([("z", pa.int32()), ("x", pa.int64()), ("y", pa.int64()), ("split", pa.string()),
                        ("hash_s1", pa.string()), ("hash_s2", pa.string()), ("hash_naip", pa.string()),
                        ("hash_naip_hires", pa.list_(pa.string()))])
    write_manifest(pa.Table.from_pylist(rows, schema=schema), rel.manifest_path, {"release": name})
    return rel


class LocalTriplets(IterableDataset):
    """The anchor: the same triplets read from local disk and decoded the same way, split across
    workers as the stream splits them: runs of `shard_size` rows, worker w taking runs w, w + nw, ...
    (`scale_alibi.model.data.order.worker_shards`). So both sides give each worker the same number
    of triplets; with 7.5 shards of 32 one worker has 128 and the other 112, and the last 16 are
    decoded on one core while the other idles, on both sides alike."""

    def __init__(self, release: Release, split: str = "train", shard_size: int = 32):
        self.release, self.shard_size = release, shard_size
        self.rows = [(r["z"], r["x"], r["y"]) for r in release.read_manifest().to_pylist() if r["split"] == split]

    def __iter__(self):
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        runs = [self.rows[i:i + self.shard_size] for i in range(0, len(self.rows), self.shard_size)]
        for z, x, y in (row for run in runs[w::nw] for row in run):
            members = {k: p.read_bytes() for k, p in self.release.triplet_paths(z, x, y).items()}
            yield {**decode_triplet(members), "z": z, "x": x, "y": y, "tile_size_m": tile_ground_size_m(z, y),
                   "shard": 0, "offset": 0, "worker": w, "epoch": 0}


def drain(loader) -> tuple[int, float]:
    """(triplets, seconds) for one full pass over a DataLoader, worker start-up included."""
    t = time.perf_counter()
    n = 0
    for batch in loader:
        n += int(batch["z"].shape[0])
    return n, time.perf_counter() - t


def cpu_s(server_pid: int) -> float:
    """CPU seconds used so far by this process, its finished children (the DataLoader workers of
    past passes) and the server's process tree: every process either side runs on."""
    own = sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    server = psutil.Process(server_pid)
    return own + sum(sum(p.cpu_times()[:2]) for p in (server, *server.children(recursive=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="existing data root (default: write a synthetic release)")
    ap.add_argument("--release", default="bench")
    ap.add_argument("--triplets", type=int, default=256)  # 8 shards of 32: as many for each of 2 workers
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from scale_alibi.serve.process import ServerProcess

    tmp = tempfile.TemporaryDirectory(prefix="loader-bench-")
    if args.data is None:
        t = time.perf_counter()
        release = make_release(Path(tmp.name), args.triplets, args.release)
        print(f"wrote {args.triplets} synthetic triplets in {time.perf_counter() - t:.1f}s")
    else:
        release = Release(args.data, args.release)
    size = sum(p.stat().st_size for p in release.path.rglob("*.png"))
    local_ds = LocalTriplets(release, shard_size=args.shard_size)
    print(f"release {release.name}: {len(local_ds.rows)} train triplets, {size / 1e6:.1f} MB of PNG; "
          f"{args.workers} workers, batch {args.batch_size}, shard {args.shard_size}")

    torch.set_num_threads(1)
    server_rates, local_rates, server_cpu, local_cpu = [], [], [], []
    with ServerProcess(release.root) as server:
        assert server.proc is not None
        ds = TripletStream(server.url, release.name, shard_size=args.shard_size, seed=0)
        for r in range(args.repeats):
            ds.set_epoch(r)
            c0 = cpu_s(server.proc.pid)
            n, s = drain(make_loader(ds, args.batch_size, num_workers=args.workers))
            c1 = cpu_s(server.proc.pid)
            n2, s2 = drain(DataLoader(local_ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_triplets))
            c2 = cpu_s(server.proc.pid)
            assert n == n2 == len(local_ds.rows), (n, n2)
            server_rates.append(n / s)
            local_rates.append(n2 / s2)
            server_cpu.append(1000 * (c1 - c0) / n)
            local_cpu.append(1000 * (c2 - c1) / n2)
            print(f"  run {r}: server {server_rates[-1]:7.1f} triplets/s ({server_cpu[-1]:.2f} ms CPU each)   "
                  f"local disk {local_rates[-1]:7.1f} triplets/s ({local_cpu[-1]:.2f} ms CPU each)")
    project, anchor = max(server_rates), max(local_rates)
    ratio = project / anchor
    print(f"project (HTTP stream -> tensors): {project:.1f} triplets/s, {min(server_cpu):.2f} ms CPU a triplet")
    print(f"anchor (local disk PNG -> tensors): {anchor:.1f} triplets/s, {min(local_cpu):.2f} ms CPU a triplet")
    print(f"ratio: {ratio:.1%}  (goal >= 85%: {'met' if ratio >= 0.85 else 'NOT met'})")
    # CPU summed over every process (main, workers, server) is what a busy machine cannot distort
    # much: on a quiet machine whose cores are all busy, throughput is cores / CPU per triplet.
    print(f"CPU ratio (anchor's CPU a triplet / project's): {min(local_cpu) / min(server_cpu):.1%}")
    print(f"loader consumes {project * size / len(local_ds.rows) / 1e6:.1f} MB/s of PNG from the server")
    tmp.cleanup()


if __name__ == "__main__":
    main()
