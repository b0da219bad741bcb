"""CPU training step time with freed memory kept in the heap (`scale_alibi.model.train.host_memory`) vs glibc's default.

    python benchmarks/host_memory_bench.py [--config tiny] [--batch 32] [--steps 8] [--repeats 2]

Each side runs in its own fresh process (an allocator setting cannot be undone in-process) on the
same synthetic batch: forward, backward and an AdamW step of the given config. Sides alternate and
the best of --repeats median step times is kept for each. Anchor: the default allocator, measured
in the same run. Prints ms/step and kernel (sys) seconds per step for both, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(config: str, batch: int, steps: int, retain: bool) -> dict[str, float]:
    """Median step seconds and sys seconds per step of `steps` training steps, in this process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from scale_alibi.model.nn.config import get_config
    from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel
    from scale_alibi.model.train.host_memory import retain_freed_memory

    if retain:
        retain_freed_memory()
    torch.manual_seed(0)
    model = ScaleAlibiModel(get_config(config))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    px = model.cfg.lores_px
    batch_t = {"s1": torch.randn(batch, 2, px, px), "s2": torch.randn(batch, 3, px, px),
               "naip_hires": torch.randn(batch, 3, 2 * px, 2 * px), "tile_size_m": torch.full((batch,), 300.0)}
    times = []
    sys0 = None
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        t0 = time.perf_counter()
        model(batch_t)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    sys_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0) / steps
    return {"step_s": statistics.median(times), "sys_s": sys_per_step}


def run_side(args: argparse.Namespace, retain: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "retain" if retain else "default", "--config", args.config,
           "--batch", str(args.batch), "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=["retain", "default"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.batch, args.steps, args.child == "retain")))
        return
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for side in ("default", "retain"):
            r = run_side(args, side == "retain")
            if side not in best or r["step_s"] < best[side]["step_s"]:
                best[side] = r
    d, p = best["default"], best["retain"]
    print(f"{args.config} batch {args.batch}, {args.steps} steps, best of {args.repeats}")
    print(f"  anchor  glibc default     : {d['step_s'] * 1e3:7.0f} ms/step, {d['sys_s'] * 1e3:5.0f} ms sys/step")
    print(f"  project retain_freed_memory: {p['step_s'] * 1e3:7.0f} ms/step, {p['sys_s'] * 1e3:5.0f} ms sys/step")
    print(f"  speed ratio (anchor / project step time): {d['step_s'] / p['step_s']:.2f}x")


if __name__ == "__main__":
    main()
