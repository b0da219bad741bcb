"""Freed memory kept in the heap (`scale_alibi.contract.host_memory`) vs glibc's default allocator.

    python benchmarks/host_memory_bench.py [--workload train] [--config tiny] [--batch 32] [--steps 8] [--repeats 2]
    python benchmarks/host_memory_bench.py --workload build [--zoom 18] [--repeats 2]

- `train`: CPU training steps (forward, backward and an AdamW step of the given config on one
  synthetic batch); the median step time of --steps after two warm-up steps.
- `build`: a one-process build (`--scheduler synchronous`) of the default synthetic world at
  --zoom, its COGs served by nginx as in benchmarks/build_scaling.py; CPU-seconds per tile.

Each side runs in its own fresh process (an allocator setting cannot be undone in-process), the
anchor with SCALE_ALIBI_RETAIN_FREED_MEMORY=0 (glibc's defaults), the project as it ships. Sides
alternate and the best of --repeats is kept for each. Prints time, kernel (sys) time and minor page
faults per step or per tile for both, each process's peak resident size (the price: freed memory
stays in the process), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure_training(config: str, batch: int, steps: int) -> dict[str, float]:
    """Median step seconds, sys seconds and minor faults per step of `steps` training steps, here."""
    sys.path.insert(0, str(ROOT))
    import torch

    from scale_alibi.model.nn.config import get_config
    from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel
    from scale_alibi.model.train.host_memory import retain_freed_memory

    retain_freed_memory()  # as the trainer does on CPU (a no-op on the anchor's side)
    torch.manual_seed(0)
    model = ScaleAlibiModel(get_config(config))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    px = model.cfg.lores_px
    batch_t = {"s1": torch.randn(batch, 2, px, px), "s2": torch.randn(batch, 3, px, px),
               "naip_hires": torch.randn(batch, 3, 2 * px, 2 * px), "tile_size_m": torch.full((batch,), 300.0)}
    times = []
    r0 = None
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        model(batch_t)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    assert r0 is not None
    return {"cost_s": statistics.median(times), "sys_s": (r1.ru_stime - r0.ru_stime) / steps,
            "faults": (r1.ru_minflt - r0.ru_minflt) / steps, "peak_rss_mib": r1.ru_maxrss / 1024}


def measure_build(stac_url: str, bbox: str, zoom: int, out: str) -> dict[str, float]:
    """CPU seconds, sys seconds and minor faults per tile of a one-process build into `out`, here."""
    sys.path.insert(0, str(ROOT))
    from shapely.geometry import box

    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request

    request = resolve_request(zoom=zoom, region=box(*map(float, bbox.split(","))), release="bench", catalog=stac_url)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    result = build_release(out, request, RunOptions(signer="none", scheduler="synchronous", progress=False,
                                                    echo=lambda m: None))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    tiles = result.triplets * 7
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return {"cost_s": cpu / tiles, "sys_s": (r1.ru_stime - r0.ru_stime) / tiles,
            "faults": (r1.ru_minflt - r0.ru_minflt) / tiles, "peak_rss_mib": r1.ru_maxrss / 1024}


def run_side(child_args: list[str], retain: bool) -> dict[str, float]:
    """One measurement in a fresh process: the project's allocator setting, or glibc's defaults."""
    env = dict(os.environ)
    if "build" in child_args:  # one thread, as build_scaling.py's one-process build; training uses every core
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("GDAL_NUM_THREADS", "1")
    if retain:
        env.pop("SCALE_ALIBI_RETAIN_FREED_MEMORY", None)
    else:
        env["SCALE_ALIBI_RETAIN_FREED_MEMORY"] = "0"
    out = subprocess.run([sys.executable, __file__, *child_args], check=True, stdout=subprocess.PIPE,
                         text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(args: argparse.Namespace, child_args, unit: str) -> None:
    """Alternate the two sides --repeats times; print the best of each and their ratio. A side's
    "cost_s" is its step time (train) or its CPU-seconds per tile (build): lower is better."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for side in ("default", "retain"):
            r = run_side(child_args(), side == "retain")
            if side not in best or r["cost_s"] < best[side]["cost_s"]:
                best[side] = r
    d, p = best["default"], best["retain"]
    for name, r in (("anchor  glibc default      ", d), ("project retain_freed_memory", p)):
        print(f"  {name}: {r['cost_s'] * 1e3:8.2f} ms/{unit}, {r['sys_s'] * 1e3:7.2f} ms sys/{unit}, "
              f"{r['faults']:8.1f} minor faults/{unit}, peak resident {r['peak_rss_mib']:6.0f} MiB")
    print(f"  speed ratio (anchor / project {'step time' if unit == 'step' else 'CPU per tile'}): "
          f"{d['cost_s'] / p['cost_s']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["train", "build"], default="train")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--zoom", type=int, default=18)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stac", help=argparse.SUPPRESS)
    ap.add_argument("--bbox", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        r = measure_training(args.config, args.batch, args.steps) if args.workload == "train" else \
            measure_build(args.stac, args.bbox, args.zoom, args.out)
        print(json.dumps(r))
        return
    if args.workload == "train":
        print(f"training: {args.config} batch {args.batch}, {args.steps} steps, best of {args.repeats}")
        compare(args, lambda: ["--child", "--workload", "train", "--config", args.config, "--batch", str(args.batch),
                               "--steps", str(args.steps)], "step")
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from build_scaling import world_on_nginx

    tmp = Path(tempfile.mkdtemp(prefix="bench-host-memory-"))
    try:
        with world_on_nginx(tmp) as (world, nginx_url):
            bbox = ",".join(repr(v) for v in world.bbox)
            outs = iter(range(10**6))
            print(f"one-process build: world {world.bbox}, zoom {args.zoom}, COGs from nginx {nginx_url}; "
                  f"best of {args.repeats}")
            # Every build writes a new directory (see build_scaling.py on ext4 and freed inodes).
            compare(args, lambda: ["--child", "--workload", "build", "--zoom", str(args.zoom), "--stac",
                                   world.stac_url, f"--bbox={bbox}", "--out", str(tmp / f"out-{next(outs)}")], "tile")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
