"""GPU benchmark of Scale-ALiBi attention and the `base` model (issue 7); `--dry-run` on CPU.

Run from the source tree (imports only `scale_alibi/model/`, needs only torch):

    PYTHONPATH=. python benchmarks/gpu_model.py            # CUDA, <= ~6 min
    PYTHONPATH=. python benchmarks/gpu_model.py --dry-run  # tiny sizes on CPU, seconds

Sections (each prints its figures; a failing section is reported and the others still run;
exit code 1 if any failed):
1. bf16 matmul peak (TFLOP/s), measured here: the MFU denominator.
2. Flex gradient check: compiled FlexAttention fwd+bwd vs the reference (materialised bias + SDPA)
   on MAE-style token subsets, self 32x32 and cross 32x32 -> 64x64 (fp32 and bf16).
3. Attention fwd+bwd time and peak memory at L = 1024 and 4096, 12 heads x 64: Flex Scale-ALiBi
   vs SDPA with a materialised bias (the reference path, bias built per call) vs SDPA without bias
   (the speed limit). Goals: flex >= 70% of no-bias throughput, memory <= 1.2x no-bias.
4. `base` training samples/s in bf16 on synthetic in-memory batches (AdamW, autocast), model
   FLOPs counted by torch's FlopCounterMode (reference backend, same matmuls), MFU vs section 1.
On CPU (--dry-run) FlexAttention has no backward: flex is timed forward-only and the gradient
check is skipped; sizes are tiny, so the figures only prove that the script runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torch.nn.functional as F

from scale_alibi.contract.tiles import tile_ground_size_m
from scale_alibi.model.nn.attention import alibi_slopes, flex_attention_scale_alibi, reference_attention
from scale_alibi.model.nn.config import get_config
from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel, coords, expand_to_hires, random_mask
from scale_alibi.model.nn.vit import gather_tokens

FAILED: list[str] = []
DEADLINE = [float("inf")]  # perf_counter() time by which the script should be done


def time_left() -> float:
    return DEADLINE[0] - time.perf_counter()


def section(name: str):
    """Decorator: print a header, run, report failure without stopping the script."""
    def wrap(fn: Callable):
        def run(*args, **kwargs):
            print(f"\n== {name} ==", flush=True)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a benchmark reports every failure and goes on
                traceback.print_exc()
                FAILED.append(name)
                print(f"!! {name} FAILED", flush=True)
            finally:
                print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
        return run
    return wrap


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of fn after warmup."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (MiB) allocated by fn above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return float("nan")
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


@section("1. matmul peak")
def matmul_peak(device: torch.device, dry: bool) -> float:
    n, dtype = (512, torch.float32) if dry else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device, warmup=2 if dry else 5, iters=3 if dry else 20)
    tflops = 2 * n**3 / sec / 1e12
    print(f"   {dtype} matmul {n}^3: {sec * 1e3:.3f} ms -> {tflops:.4g} TFLOP/s (peak anchor)")
    return tflops


def mae_inputs(b: int, h: int, d: int, q_grid: int, k_grid: int, keep: float,
               device: torch.device, dtype: torch.dtype, grad: bool):
    """q/k/v plus coordinates for kept subsets of a q_grid (queries) and k_grid (keys) image."""
    tile = torch.full((b,), tile_ground_size_m(15, 12300), device=device)
    l_ref = float(tile[0]) / q_grid
    n_q = q_grid * q_grid
    kept = max(1, int(n_q * keep))
    ids_q = torch.argsort(torch.rand(b, n_q, device=device), dim=1)[:, :kept]
    ids_k = ids_q if k_grid == q_grid else expand_to_hires(ids_q, q_grid)
    q_xy = gather_tokens(coords(tile, q_grid, l_ref), ids_q)
    k_xy = gather_tokens(coords(tile, k_grid, l_ref), ids_k)
    mk = lambda n: torch.randn(b, h, n, d, device=device, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return mk(ids_q.shape[1]), mk(ids_k.shape[1]), mk(ids_k.shape[1]), q_xy, k_xy


@section("2. flex gradient check vs reference")
def grad_check(device: torch.device, dry: bool) -> None:
    flex = flex_attention_scale_alibi
    # each check is one flex fwd+bwd compile (~30 s): the bf16 one only if time allows.
    # Tolerances are relative to max|ref|: TF32 or bf16 rounding stays far below them, a wrong
    # bias (sign, scale, coordinates) gives errors of order 0.1-1.
    checks = ((32, 32, torch.float32, 1e-3), (32, 64, torch.float32, 1e-3),
              (32, 64, torch.bfloat16, 5e-2))
    if device.type != "cuda":  # no flex backward on CPU: run the check's code on the reference
        print("   dry run: FlexAttention has no backward on CPU; checking the reference against "
              "itself only to exercise this code (flex forward == reference: tests/)")
        flex, checks = reference_attention, ((8, 8, torch.float32, 1e-3),
                                             (8, 16, torch.float32, 1e-3))
    torch.backends.cuda.matmul.allow_tf32 = False
    slopes = alibi_slopes(12).to(device)
    for q_grid, k_grid, dtype, tol in checks:
        if dtype == torch.bfloat16 and time_left() < 240:
            print(f"   bf16 check skipped: {time_left():.0f} s of the time budget left")
            continue
        torch.manual_seed(0)
        q, k, v, q_xy, k_xy = mae_inputs(2, 12, 64, q_grid, k_grid, 0.25, device, dtype, True)
        g = torch.randn(q.shape, device=device, dtype=dtype)
        grads = {}
        for name, fn in (("flex", flex), ("ref", reference_attention)):
            # reference in fp32 from the same inputs: the truth for both dtypes
            qq, kk, vv = (t.detach().float().requires_grad_() if name == "ref" else t
                          for t in (q, k, v))
            out = fn(qq, kk, vv, q_xy, k_xy, slopes)
            dq, dk, dv = torch.autograd.grad(out, (qq, kk, vv), g.to(out.dtype))
            grads[name] = (out.float(), dq.float(), dk.float(), dv.float())
        worst = 0.0
        for what, a, r in zip(("out", "dq", "dk", "dv"), grads["flex"], grads["ref"]):
            err = ((a - r).abs().max() / r.abs().max().clamp(min=1e-6)).item()
            worst = max(worst, err)
            print(f"   {q_grid}x{q_grid}->{k_grid}x{k_grid} {str(dtype):14s} {what}: "
                  f"max |flex-ref| / max|ref| = {err:.2e}")
        ok = worst <= tol
        print(f"   -> {'PASS' if ok else 'FAIL'} (tolerance {tol:.0e})")
        if not ok:
            raise AssertionError(f"flex gradients differ from reference: {worst:.2e}")


@section("3. attention fwd+bwd: flex Scale-ALiBi vs SDPA+bias vs SDPA no bias")
def attention_bench(device: torch.device, dry: bool) -> None:
    heads, d = (2, 16) if dry else (12, 64)
    dtype = torch.float32 if dry else torch.bfloat16
    slopes = alibi_slopes(heads).to(device)
    cases = ((8, 1),) if dry else ((32, 16), (64, 4))  # (grid, batch): L = grid^2
    for grid, b in cases:
        torch.manual_seed(0)
        q, k, v, q_xy, k_xy = mae_inputs(b, heads, d, grid, grid, 1.0, device, dtype, True)
        length = q.shape[2]
        flops = 4 * b * heads * length * length * d  # QK^T and PV, forward
        grad_out = torch.randn_like(q)

        def fwd_bwd(fn):
            def run():
                out = fn()
                torch.autograd.grad(out, (q, k, v), grad_out)
            return run

        qd, kd, vd = (t.detach() for t in (q, k, v))  # CPU flex: forward-only, no grad inputs
        variants = {
            "flex scale-alibi": (lambda: flex_attention_scale_alibi(qd, kd, vd, q_xy, k_xy, slopes))
            if dry else (lambda: flex_attention_scale_alibi(q, k, v, q_xy, k_xy, slopes)),
            "sdpa + bias": lambda: reference_attention(q, k, v, q_xy, k_xy, slopes),
            "sdpa no bias": lambda: F.scaled_dot_product_attention(q, k, v),
        }
        results = {}
        for name, fn in variants.items():
            forward_only = dry and name.startswith("flex")  # no flex backward on CPU
            run = (lambda f=fn: f()) if forward_only else fwd_bwd(fn)
            with torch.no_grad() if forward_only else torch.enable_grad():
                sec = timed(run, device, warmup=1 if dry else 3, iters=1 if dry else 10)
                mem = peak_extra_mib(run, device)
            total = flops if forward_only else 3.5 * flops  # bwd ~ 2.5x fwd
            results[name] = (sec, mem)
            print(f"   L={length:5d} B={b:2d} {name:17s} {'fwd    ' if forward_only else 'fwd+bwd'}"
                  f" {sec * 1e3:8.3f} ms  {total / sec / 1e12:7.2f} TFLOP/s  "
                  f"peak +{mem:9.1f} MiB")
        (tf, mf), (tb, mb), (tn, mn) = (results[n] for n in variants)
        print(f"   L={length}: throughput flex/no-bias = {tn / tf:.2f} (goal >= 0.70), "
              f"sdpa+bias/no-bias = {tn / tb:.2f}; memory flex/no-bias = {mf / mn:.2f} "
              f"(goal <= 1.2), sdpa+bias/no-bias = {mb / mn:.2f}"
              + (" [dry run: flex is forward-only, ratios meaningless]" if dry else ""))


def synthetic_batch(cfg, b: int, px: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {"s1": torch.randn(b, cfg.s1_channels, px, px, device=device),
            "s2": torch.randn(b, cfg.s2_channels, px, px, device=device),
            "naip_hires": torch.randn(b, cfg.hires_channels, 2 * px, 2 * px, device=device),
            "tile_size_m": torch.full((b,), tile_ground_size_m(15, 12300), device=device),
            "mask": random_mask(b, (px // cfg.patch_size) ** 2, cfg.mask_ratio, device)}


def set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend


@section("4. base training samples/s (bf16) and MFU")
def training_bench(device: torch.device, dry: bool, peak_tflops: float | None, batch: int,
                   compile_model: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = get_config("tiny", dim=32, heads=2) if dry else get_config("base")
    px = 64 if dry else cfg.lores_px
    b = 2 if dry else batch
    amp = device.type == "cuda"
    torch.manual_seed(0)
    model = ScaleAlibiModel(cfg).to(device)
    print(f"   config {cfg.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params,"
          f" {px} px low-res ({(px // cfg.patch_size) ** 2} tokens), {2 * px} px hires "
          f"({(2 * px // cfg.patch_size) ** 2} tokens), mask {cfg.mask_ratio}, batch {b}")

    # FLOPs: count one fwd+bwd with the reference backend (identical matmuls; flex is opaque)
    small = synthetic_batch(cfg, 2, px, device)
    set_backend(model, "reference")
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(small)["loss"].backward()
    flops_per_sample = counter.get_total_flops() / 2
    model.zero_grad(set_to_none=True)
    set_backend(model, cfg.attn_backend)
    print(f"   model FLOPs per sample (fwd+bwd): {flops_per_sample / 1e9:.4g} GFLOP")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    data = synthetic_batch(cfg, b, px, device)
    label = "eager model, compiled flex" if device.type == "cuda" else "eager model, reference attn"
    variants = [(label, model)]
    if compile_model:
        variants.append(("torch.compile(model)", torch.compile(model)))
    for name, net in variants:
        if name.startswith("torch.compile") and time_left() < 150:
            print(f"   {name}: skipped, {time_left():.0f} s of the time budget left")
            continue

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = net(data)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        try:
            sec = timed(step, device, warmup=1 if dry else 3, iters=1 if dry else 10)
        except Exception:  # noqa: BLE001 - report, keep the other variant's figures
            traceback.print_exc()
            print(f"   {name}: failed")
            if name.startswith("eager"):
                raise
            continue
        sps = b / sec
        achieved = sps * flops_per_sample / 1e12
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if amp else float("nan")
        mfu = achieved / peak_tflops if peak_tflops else float("nan")
        print(f"   {name}: {sec * 1e3:.1f} ms/step, {sps:.1f} samples/s, {achieved:.4g} TFLOP/s "
              f"achieved, MFU {100 * mfu:.1f}% of measured peak {peak_tflops or float('nan'):.4g}"
              f" TFLOP/s (goal >= 35%), peak memory {mem:.1f} GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--batch", type=int, default=64, help="base training batch size")
    parser.add_argument("--compile-model", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch.compile(model) (GPU)")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="skip optional parts (compiled model) past this many seconds")
    args = parser.parse_args(argv)
    FAILED.clear()
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("no CUDA device: use --dry-run")
        return 2
    torch.manual_seed(0)
    t0 = time.perf_counter()
    DEADLINE[0] = t0 + args.budget_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {name}, python {sys.version.split()[0]}")
    peak = matmul_peak(device, args.dry_run)
    grad_check(device, args.dry_run)
    attention_bench(device, args.dry_run)
    training_bench(device, args.dry_run, peak, args.batch, args.compile_model and not args.dry_run)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s; "
          + (f"FAILED: {', '.join(FAILED)}" if FAILED else "all sections ran"))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
