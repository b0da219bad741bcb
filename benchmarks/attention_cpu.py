"""Scale-ALiBi attention forward on CPU: FlexAttention vs the materialised-bias reference (SDPA).

    python benchmarks/attention_cpu.py [--batch 8] [--heads 4] [--head-dim 16] [--lengths 64 256] [--compiled]

Why `attend(backend="auto")` takes the reference on CPU: CPU flex has no backward (torch 2.13), and
this measures whether its forward would be worth taking for evaluation. Anchor: the reference
(`reference_attention`, SDPA with a float bias) on the same inputs in the same run; the figure
printed is flex's time beside it and the ratio flex / reference (> 1: flex is slower).
`--compiled` adds torch.compile'd flex (fused; its compile time per shape is printed too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_ms  # noqa: E402

from scale_alibi.model.nn.attention import alibi_slopes, flex_attention_scale_alibi, reference_attention  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compiled", action="store_true", help="also time torch.compile'd flex (slow to compile)")
    args = ap.parse_args()

    torch.manual_seed(0)
    slopes = alibi_slopes(args.heads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch}, "
          f"{args.heads} heads x {args.head_dim}")
    with torch.no_grad():
        for n in args.lengths:
            side = int(n**0.5)
            rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            xy = torch.stack([cols, rows], -1).reshape(1, -1, 2).float().expand(args.batch, -1, -1)
            q, k, v = (torch.randn(args.batch, args.heads, xy.shape[1], args.head_dim) for _ in range(3))
            ref = median_ms(lambda: reference_attention(q, k, v, xy, xy, slopes), args.repeats)
            flex = median_ms(lambda: flex_attention_scale_alibi(q, k, v, xy, xy, slopes, compile=False),
                             args.repeats)
            print(f"L={xy.shape[1]:5d}  reference {ref:8.2f} ms   eager flex {flex:8.2f} ms   "
                  f"flex/reference {flex / ref:6.1f}x")
            if args.compiled:
                t0 = time.perf_counter()
                flex_attention_scale_alibi(q, k, v, xy, xy, slopes, compile=True)
                compile_s = time.perf_counter() - t0
                comp = median_ms(lambda: flex_attention_scale_alibi(q, k, v, xy, xy, slopes, compile=True),
                                 args.repeats)
                print(f"          compiled flex {comp:8.2f} ms (compile {compile_s:.0f} s)   "
                      f"compiled/reference {comp / ref:6.1f}x")


if __name__ == "__main__":
    main()
