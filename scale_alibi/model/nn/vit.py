"""Transformer building blocks: patchify, patch embedding, (cross-)attention blocks, sin-cos.

Shapes: B batch, L tokens, D width, H heads, d = D / H head width. Encoders carry no position
embeddings: position enters only through the Scale-ALiBi bias, from token coordinates `xy`
(B, L, 2) in reference units (see scale_alibi.model.nn.attention). Pre-norm blocks as in CROMA / timm.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
from torch import Tensor

from scale_alibi.model.nn.attention import alibi_slopes, attend


def patchify(img: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p), patches row-major, pixels ordered (c, i, j)."""
    b, c, h, w = img.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
    x = img.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """Select tokens: x (B, L, ...) and ids (B, K) -> (B, K, ...)."""
    index = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


@lru_cache(maxsize=32)
def sincos_2d(grid: int, dim: int) -> Tensor:
    """MAE's fixed 2D sin-cos position embedding of a grid x grid map, (grid*grid, dim)."""
    if dim % 4:
        raise ValueError("sin-cos embedding width must be a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    row, col = torch.meshgrid(pos, pos, indexing="ij")

    def embed_1d(p: Tensor) -> Tensor:
        out = p.reshape(-1, 1) * omega[None]  # (N, dim/4)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([embed_1d(row), embed_1d(col)], dim=1).float()


class PatchEmbed(nn.Module):
    """Linear embedding of p x p patches already cut by `patchify`: (B, L, C*p*p) -> (B, L, D)."""

    def __init__(self, in_channels: int, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)

    def forward(self, patches: Tensor) -> Tensor:
        return self.proj(patches)


class MLP(nn.Module):
    """Pre-norm feed-forward: LN -> Linear(D, rD) -> GELU -> Linear(rD, D)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-norm multi-head (cross-)attention with the Scale-ALiBi bias from token coordinates."""

    slopes: Tensor | None  # a buffer (register_buffer below); None without ALiBi

    def __init__(self, dim: int, heads: int, cross: bool = False, alibi: bool = True,
                 backend: str = "auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.cross, self.backend = heads, cross, backend
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim) if cross else None
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        # fixed slopes: a buffer so they follow .to(device); not persistent (derived from heads)
        self.register_buffer("slopes", alibi_slopes(heads) if alibi else None, persistent=False)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, H, L, d)

    def forward(self, x: Tensor, xy: Tensor | None = None, context: Tensor | None = None,
                context_xy: Tensor | None = None) -> Tensor:
        """x (B, Lq, D), xy (B, Lq, 2); context (B, Lk, D), context_xy (B, Lk, 2) -> (B, Lq, D)."""
        x = self.norm(x)
        if self.context_norm is not None:  # cross-attention: keys and values from the context
            context = self.context_norm(context)
        else:
            context, context_xy = x, xy
        q = self._split(self.q(x))
        k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))
        out = attend(q, k, v, xy, context_xy, self.slopes, backend=self.backend)  # (B, H, Lq, d)
        b, h, n, d = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, h * d))


class Block(nn.Module):
    """Transformer block: x + SelfAttn(x), then x + MLP(x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, alibi: bool = True,
                 backend: str = "auto"):
        super().__init__()
        self.attn = Attention(dim, heads, alibi=alibi, backend=backend)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, xy: Tensor | None = None) -> Tensor:
        x = x + self.attn(x, xy)
        return x + self.mlp(x)


class CrossBlock(nn.Module):
    """CROMA's cross-encoder block: x + SelfAttn(x), x + CrossAttn(x, context), x + MLP(x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.self_attn = Attention(dim, heads, backend=backend)
        self.cross_attn = Attention(dim, heads, cross=True, backend=backend)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor, xy: Tensor, context: Tensor, context_xy: Tensor) -> Tensor:
        x = x + self.self_attn(x, xy)
        x = x + self.cross_attn(x, xy, context, context_xy)
        return x + self.mlp(x)


class Encoder(nn.Module):
    """ViT encoder without position embeddings: patch embed, keep tokens, blocks, final norm."""

    def __init__(self, in_channels: int, patch_size: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        self.embed = PatchEmbed(in_channels, patch_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, backend=backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, patches: Tensor, xy: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """patches (B, L, C*p*p) from `patchify`; ids_keep (B, K) or None (all L); xy (B, K, 2)
        of the kept tokens -> (B, K, D). Masked patches are dropped before the embedding."""
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        x = self.embed(patches)  # (B, K, D)
        for block in self.blocks:
            x = block(x, xy)
        return self.norm(x)


class CrossEncoder(nn.Module):
    """Stack of CrossBlocks fusing a query stream with a context stream, then a final norm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 backend: str = "auto"):
        super().__init__()
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, mlp_ratio, backend=backend)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, xy: Tensor, context: Tensor, context_xy: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, xy, context, context_xy)
        return self.norm(x)
