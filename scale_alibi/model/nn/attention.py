"""Scale-ALiBi attention: ALiBi slopes, the ground-distance bias, and its two implementations.

Logits between query i and key j of head h are

    a_hij = q_hi . k_hj / sqrt(d)  -  m(h) * ||c_i - c_j|| / L_ref

with c the patch centres in metres on the ground, m(h) ALiBi's geometric head slopes and L_ref a
fixed reference length (config). The paper's Eq. 1 prints "sqrt(d) * q.k" (multiplying by
sqrt(d)) and Eq. 2 multiplies the distance *by* the GSD; both are typos/ambiguities: the scaled
dot product divides by sqrt(d) (as in every transformer and in CROMA's code), and the bias is
the true ground distance in units of L_ref. Where the patch ground size equals L_ref (the low-res
grid at the reference zoom) this is exactly CROMA's 2D-ALiBi (distance in patches x slope);
across grids (e.g. 32x32 queries against 64x64 keys over the same ground) it is the true
ground distance between the two patch centres.

Callers pass coordinates already divided by L_ref ("reference units"), shape (B, L, 2), for the
tokens actually present (MAE-masked subsets just pass their kept tokens' coordinates).

Two implementations, equal to ~1e-6:
- `flex`: FlexAttention with a `score_mod` that reads the captured per-token coordinates, so no
  (B, H, Lq, Lk) bias tensor is materialised (compiled on CUDA). FlexAttention has no backward on
  CPU (torch 2.13), so CPU training cannot use it.
- `reference`: the bias materialised as (B, H, Lq, Lk) and passed to SDPA as a float mask.
`attend(..., backend="auto")` takes flex on CUDA and the reference on CPU: CPU flex cannot
train (no backward), and its forward is slower there too (`python benchmarks/attention_cpu.py`,
torch 2.13, 2 cores, B=8, 4 heads x 16: eager flex 15 ms at L=64 and 62 ms at L=256 vs the
reference's 0.4 ms and 2.7 ms; `--compiled` times the fused kernel and its compile). So CPU
evaluation (`embed` under no_grad) also takes the reference; pass backend="flex" to force it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

_flex_attention: Callable[..., Tensor] | None
try:  # FlexAttention exists from torch 2.5
    from torch.nn.attention import flex_attention as _flex

    _flex_attention = _flex.flex_attention
except ImportError:  # pragma: no cover - older torch
    _flex_attention = None


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's geometric head slopes m(h) (Press et al.; CROMA uses the same), shape (n_heads,)."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    def slopes(n: int) -> list[float]:
        if math.log2(n).is_integer():
            return power_of_2(n)
        # non powers of 2 (e.g. 12 heads): the closest power of 2, then every other slope of 2x
        closest = 2 ** math.floor(math.log2(n))
        return power_of_2(closest) + slopes(2 * closest)[0::2][: n - closest]

    return torch.tensor(slopes(n_heads), dtype=torch.float32)


def scale_alibi_bias(q_xy: Tensor, k_xy: Tensor, slopes: Tensor) -> Tensor:
    """Materialised Scale-ALiBi bias -m(h) * ||c_i - c_j||, shape (B, H, Lq, Lk).

    q_xy (B, Lq, 2), k_xy (B, Lk, 2): token centres in reference units (metres / L_ref).
    """
    dx = q_xy[:, :, None, 0] - k_xy[:, None, :, 0]  # (B, Lq, Lk)
    dy = q_xy[:, :, None, 1] - k_xy[:, None, :, 1]
    dist = torch.sqrt(dx * dx + dy * dy)
    return -slopes.to(dist)[None, :, None, None] * dist[:, None, :, :]


def reference_attention(q: Tensor, k: Tensor, v: Tensor, q_xy: Tensor, k_xy: Tensor,
                        slopes: Tensor) -> Tensor:
    """SDPA with the materialised bias. q (B,H,Lq,d), k/v (B,H,Lk,d) -> (B,H,Lq,d)."""
    bias = scale_alibi_bias(q_xy.detach(), k_xy.detach(), slopes).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _scale_alibi_score_mod(q_xy: Tensor, k_xy: Tensor, slopes: Tensor):
    """A FlexAttention score_mod computing -m(h) * distance from captured coordinates."""
    qx, qy = q_xy[..., 0].contiguous(), q_xy[..., 1].contiguous()  # (B, Lq)
    kx, ky = k_xy[..., 0].contiguous(), k_xy[..., 1].contiguous()  # (B, Lk)

    def score_mod(score, b, h, q_idx, kv_idx):
        dx = qx[b, q_idx] - kx[b, kv_idx]
        dy = qy[b, q_idx] - ky[b, kv_idx]
        return score - slopes[h] * torch.sqrt(dx * dx + dy * dy)

    return score_mod


@cache
def _compiled_flex():
    """torch.compile'd flex_attention (fused kernel); compiled once per process and shape."""
    # dynamic=False: one specialised kernel per (B, Lq, Lk). A model has several shapes (self
    # 256 / 1024, cross 256 -> 1024, eval batch sizes), more than dynamo's default recompile
    # limit of 8, past which it would silently run eager flex, which materialises the scores.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    return torch.compile(_flex_attention, dynamic=False)


def flex_attention_scale_alibi(q: Tensor, k: Tensor, v: Tensor, q_xy: Tensor, k_xy: Tensor,
                               slopes: Tensor, compile: bool | None = None) -> Tensor:
    """FlexAttention with the Scale-ALiBi score_mod (no bias tensor). Shapes as reference."""
    if _flex_attention is None:
        raise RuntimeError("FlexAttention needs torch >= 2.5; use backend='reference'")
    compile = q.is_cuda if compile is None else compile
    score_mod = _scale_alibi_score_mod(q_xy.detach().float(), k_xy.detach().float(),
                                       slopes.to(device=q.device, dtype=torch.float32))
    if compile:
        # q, k, v already carry autocast's dtype; the score_mod works in fp32 inside the kernel
        with torch.autocast(q.device.type, enabled=False):
            return _compiled_flex()(q, k, v, score_mod=score_mod)
    with warnings.catch_warnings():  # eager flex warns that it materialises scores: known, fine
        warnings.simplefilter("ignore")
        return _flex_attention(q, k, v, score_mod=score_mod)


def choose_backend(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto") -> str:
    """'flex' on CUDA, 'reference' on CPU (no CPU flex backward; its forward is slower there).

    An explicit backend="flex" on CPU is honoured only when no gradient flows (else it raises).
    """
    if backend not in ("auto", "flex", "reference"):
        raise ValueError(f"unknown attention backend {backend!r}; use auto, flex or reference")
    if backend != "auto":
        if backend == "flex" and not q.is_cuda and _needs_grad(q, k, v):
            raise RuntimeError("FlexAttention has no backward on CPU: use backend='reference' "
                               "(or 'auto') for CPU training")
        return backend
    return "flex" if q.is_cuda and _flex_attention is not None else "reference"


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attend(q: Tensor, k: Tensor, v: Tensor, q_xy: Tensor | None, k_xy: Tensor | None,
           slopes: Tensor | None, backend: str = "auto") -> Tensor:
    """Scaled dot-product attention with the Scale-ALiBi bias (none if coordinates are None)."""
    if q_xy is None or k_xy is None or slopes is None:
        return F.scaled_dot_product_attention(q, k, v)
    if choose_backend(q, k, v, backend) == "flex":
        return flex_attention_scale_alibi(q, k, v, q_xy, k_xy, slopes)
    return reference_attention(q, k, v, q_xy, k_xy, slopes)
