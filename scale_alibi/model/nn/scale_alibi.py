"""The Scale-ALiBi model: three encoders, two cross-encoders, an MAE decoder, and its losses.

Data flow for a batch of B ground squares (tiles), low-res grid g x g (g = S2 px / p), hires grid
2g x 2g (NAIP at twice the pixels, same patch size p, so each low-res patch covers 2x2 hires):

1. One random MAE mask on the low-res grid, K = round(g*g*(1-mask_ratio)) kept patches per
   sample (fixed per batch so FlexAttention never recompiles), shared by S1 and S2 and expanded
   2x2 onto the hires grid (4K kept hires patches): every modality sees the same ground, so no
   cross-attention can leak a masked patch's ground. `croma` (independent_masks) draws S1's and
   S2's masks independently, as CROMA does: each modality's masked patches are then partly seen by
   the other, which is the cross-modal reconstruction CROMA trains.
2. E_radar(S1), E_lores(S2), E_hires(NAIP) encode their kept tokens (no position embeddings;
   Scale-ALiBi biases from the tokens' ground coordinates, see scale_alibi.model.nn.attention; `croma` counts
   distance in patches of the token's own grid instead, CROMA's 2D-ALiBi).
3. Each encoder's mean-pooled tokens -> MLP head -> L2-normalised embedding; InfoNCE over the
   three distinct pairs (scale_alibi.model.nn.losses).
4. Cross-encoder 1: S1 tokens attend to S2 tokens (both low-res grid). Cross-encoder 2: that
   joint stream attends to the hires tokens (cross-grid bias: true ground distance). The
   `croma` config stops after cross-encoder 1.
5. The MAE decoder works on the **low-res grid**: the K joint tokens (at S1's kept positions)
   plus mask tokens elsewhere, 2D sin-cos position embeddings, transformer blocks, then one linear
   layer predicting, per low-res patch, the packed pixels [S1 (2*p*p) | S2 (3*p*p) | NAIP as its
   four hires sub-patches (4 * 3*p*p, sub-patch order (0,0), (0,1), (1,0), (1,1) = row-major)].
   Reconstruction: per modality, MSE over that modality's masked patches against
   per-patch-normalised targets (hires: normalised per hires sub-patch), **summed** over the
   modalities as the paper's Eq. 4, its code and CROMA do (a mean would weigh reconstruction
   1/3 (base) or 1/2 (croma) of theirs against the contrastive term).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from scale_alibi.model.nn.config import ModelConfig
from scale_alibi.model.nn.geometry import patch_centres_m
from scale_alibi.model.nn.losses import ContrastiveLoss, masked_patch_mse
from scale_alibi.model.nn.vit import Block, CrossEncoder, Encoder, gather_tokens, patchify, sincos_2d


def split_ids_from_mask(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Bool mask (B, N), True = masked, same count per row -> (kept ids (B, K), masked ids (B, N-K)),
    each ascending."""
    kept = (~mask).sum(dim=1)
    if not bool((kept == kept[0]).all()):
        raise ValueError("every row of the MAE mask must keep the same number of patches")
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # kept (0) first, ascending
    k = int(kept[0])
    return order[:, :k], order[:, k:]


def random_mask(batch: int, n: int, mask_ratio: float, device: torch.device | str) -> Tensor:
    """Bool (B, N) mask, True = masked, exactly round(n * (1 - ratio)) kept per row (>= 1).

    Drawn from torch's global CPU RNG (the trainer saves/restores it for exact resume).
    """
    keep = max(1, int(round(n * (1.0 - mask_ratio))))
    order = torch.argsort(torch.rand(batch, n), dim=1)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], False)
    return mask.to(device)


def expand_to_hires(ids_lo: Tensor, grid: int) -> Tensor:
    """Low-res kept ids (B, K) on a grid x grid map -> their 2x2 hires children (B, 4K)."""
    row, col = ids_lo // grid, ids_lo % grid
    children = [(2 * row + di) * (2 * grid) + (2 * col + dj) for di in (0, 1) for dj in (0, 1)]
    return torch.stack(children, dim=-1).reshape(ids_lo.shape[0], -1)  # (B, K*4), parent-major


def group_hires(patches: Tensor, grid: int) -> Tensor:
    """Hires per-patch vectors (B, (2g)^2, P) -> (B, g^2, 4, P): each low-res patch's 2x2 children."""
    b, _, p = patches.shape
    x = patches.reshape(b, grid, 2, grid, 2, p).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid * grid, 4, p)


def coords(tile_size_m: Tensor, grid: int, l_ref_m: float, units: str = "ground") -> Tensor:
    """Patch centres of a grid x grid image of tiles tile_size_m wide (B, N, 2): in units of L_ref
    ("ground"), or in patches of this grid whatever their ground size ("patch", CROMA)."""
    if units == "patch":
        return patch_centres_m(grid, torch.ones_like(tile_size_m))
    return patch_centres_m(grid, tile_size_m / grid) / l_ref_m


class EmbeddingHead(nn.Module):
    """Mean-pooled tokens -> LN -> MLP -> L2-normalised embedding (CROMA's GAP-FFN + projection)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.net(tokens.mean(dim=1)), dim=-1)


class MAEDecoder(nn.Module):
    """Decoder on the low-res grid: joint tokens + mask tokens + 2D sin-cos -> packed pixels."""

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(cfg.decoder_dim))
        self.blocks = nn.ModuleList(Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio,
                                          alibi=False) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, out_dim)

    def forward(self, joint: Tensor, ids_keep: Tensor, grid: int, ids_out: Tensor) -> Tensor:
        """joint (B, K, D) at ids_keep (B, K) -> predictions (B, M, out_dim) for ids_out (B, M)."""
        return self.predict(self.blocks_forward(joint, ids_keep, grid), ids_out)

    def blocks_forward(self, joint: Tensor, ids_keep: Tensor, grid: int) -> Tensor:
        """joint (B, K, D) at ids_keep plus mask tokens elsewhere, through the blocks: (B, N, Dd)."""
        x = self.proj(joint)  # (B, K, Dd)
        b, _, dd = x.shape
        full = self.mask_token.to(x.dtype).expand(b, grid * grid, dd)
        x = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, dd), x)  # (B, N, Dd)
        x = x + sincos_2d(grid, dd).to(x)
        for block in self.blocks:
            x = block(x)
        return x

    def predict(self, hidden: Tensor, ids_out: Tensor) -> Tensor:
        """Packed pixels (B, M, out_dim) of positions ids_out (B, M): only the patches a loss
        reads go through the wide pixel head."""
        return self.head(self.norm(gather_tokens(hidden, ids_out)))


class ScaleAlibiModel(nn.Module):
    """Triple-contrastive + MAE model with Scale-ALiBi attention (see the module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.l_ref_m = cfg.reference_length_m
        p, d, h, r, be = cfg.patch_size, cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.attn_backend
        self.encoders = nn.ModuleDict({
            "s1": Encoder(cfg.s1_channels, p, d, cfg.radar_depth, h, r, be),
            "s2": Encoder(cfg.s2_channels, p, d, cfg.lores_depth, h, r, be),
        })
        if cfg.use_hires:
            self.encoders["naip_hires"] = Encoder(cfg.hires_channels, p, d, cfg.hires_depth, h, r,
                                                  be)
        self.heads = nn.ModuleDict({m: EmbeddingHead(d, r) for m in self.encoders})
        self.cross_lores = CrossEncoder(d, cfg.cross_depth, h, r, be)
        self.cross_hires = CrossEncoder(d, cfg.cross_depth, h, r, be) if cfg.use_hires else None
        self.pixel_dims = {"s1": cfg.s1_channels * p * p, "s2": cfg.s2_channels * p * p}
        if cfg.use_hires:
            self.pixel_dims["naip_hires"] = 4 * cfg.hires_channels * p * p
        self.decoder = MAEDecoder(cfg, sum(self.pixel_dims.values()))
        self.contrastive = ContrastiveLoss(cfg.temperature_init, cfg.max_logit_scale)
        self.apply(_init_weights)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities this config encodes, in loss order."""
        return tuple(self.encoders)

    def _grid(self, batch: dict[str, Tensor]) -> int:
        h, w = batch["s2"].shape[-2:] if "s2" in batch else batch["s1"].shape[-2:]
        if h != w:
            raise ValueError(f"tiles must be square, got {h}x{w}")
        return h // self.cfg.patch_size

    def forward(self, batch: dict[str, Tensor], masks: dict[str, Tensor] | None = None) -> dict:
        """Training forward; `masks` ({"s1", "s2"}, under independent_masks) fixes the per-modality
        masks. Returns loss, contrastive, reconstruction (scalars), per-modality reconstruction,
        embeddings {modality: (B, D)}, the low-res masks used per modality ("masks", (B, g*g),
        True = masked) and S2's as "mask"."""
        cfg, p = self.cfg, self.cfg.patch_size
        g = self._grid(batch)
        n = g * g
        b = batch["s2"].shape[0]
        device = batch["s2"].device
        tile_m = batch["tile_size_m"].to(device, torch.float32).reshape(b)
        masks = self._masks(batch, masks, b, n, device)
        split = {id(mask): split_ids_from_mask(mask) for mask in masks.values()}  # once per mask
        ids = {m: split[id(mask)] for m, mask in masks.items()}  # (B, K) kept, (B, N-K) masked
        grid_xy = coords(tile_m, g, self.l_ref_m, cfg.bias_units)
        xy = {m: gather_tokens(grid_xy, kept) for m, (kept, _) in ids.items()}  # (B, K, 2)
        # each image is cut into patches once: encoders read the kept ones, losses the masked ones
        patches = {m: patchify(batch[m], p) for m in self.modalities}

        tokens = {m: self.encoders[m](patches[m], xy[m], ids[m][0]) for m in ("s1", "s2")}
        if cfg.use_hires:
            ids_hi = expand_to_hires(ids["s2"][0], g)  # (B, 4K): the shared mask's hires ground
            xy_hi = gather_tokens(coords(tile_m, 2 * g, self.l_ref_m, cfg.bias_units), ids_hi)
            tokens["naip_hires"] = self.encoders["naip_hires"](patches["naip_hires"], xy_hi, ids_hi)

        embeddings = {m: self.heads[m](tokens[m]) for m in self.modalities}
        contrastive, pair_losses = self.contrastive(embeddings)

        joint = self.cross_lores(tokens["s1"], xy["s1"], tokens["s2"], xy["s2"])  # (B, K, D)
        if self.cross_hires is not None:  # cfg.use_hires
            joint = self.cross_hires(joint, xy["s1"], tokens["naip_hires"], xy_hi)
        hidden = self.decoder.blocks_forward(joint, ids["s1"][0], g)  # (B, N, Dd)

        if cfg.use_hires:
            patches["naip_hires"] = group_hires(patches["naip_hires"], g)  # (B, N, 4, 3*p*p)
            ids["naip_hires"] = ids["s2"]  # the same ground is masked
        recon = {}
        for group in _group_by_mask({m: ids[m][1] for m in self.pixel_dims}).values():
            # one pass of the wide pixel head per distinct mask (one in all but `croma`)
            pred = self.decoder.predict(hidden, ids[group[0]][1])
            preds = dict(zip(self.pixel_dims, pred.split(list(self.pixel_dims.values()), dim=-1)))
            for m in group:
                recon[m] = masked_patch_mse(preds[m], patches[m], ids[m][1])
        recon = {m: recon[m] for m in self.pixel_dims}
        reconstruction = torch.stack(list(recon.values())).sum()  # Eq. 4 / CROMA: a sum
        loss = cfg.contrastive_weight * contrastive + cfg.reconstruction_weight * reconstruction
        return {"loss": loss, "contrastive": contrastive, "reconstruction": reconstruction,
                "reconstruction_per_modality": recon, "contrastive_per_pair": pair_losses,
                "embeddings": embeddings, "mask": masks["s2"], "masks": masks}

    def _masks(self, batch: dict[str, Tensor], per_modality: dict[str, Tensor] | None, b: int, n: int,
               device: torch.device) -> dict[str, Tensor]:
        """The low-res MAE mask per low-res modality: `per_modality` ({"s1", "s2"}, under
        independent_masks) or the batch's "mask" (for all), else random (one shared draw, or one
        per modality under independent_masks)."""
        if "masks" in batch:  # where they were once passed: refuse rather than silently draw new ones
            raise ValueError("pass per-modality masks as forward(batch, masks=...), not in the batch")
        if per_modality is not None:
            if not self.cfg.independent_masks:
                raise ValueError("per-modality masks need a config with independent_masks")
            return {m: per_modality[m].to(device, torch.bool) for m in ("s1", "s2")}
        given = batch.get("mask")
        if given is not None:
            mask = given.to(device, torch.bool)
            return {"s1": mask, "s2": mask}
        if self.cfg.independent_masks:
            return {m: random_mask(b, n, self.cfg.mask_ratio, device) for m in ("s1", "s2")}
        mask = random_mask(b, n, self.cfg.mask_ratio, device)
        return {"s1": mask, "s2": mask}

    def features(self, batch: dict[str, Tensor], modality: str) -> Tensor:
        """Mean-pooled final tokens (B, D) of one modality's encoder over all patches: the frozen
        features a probe reads (CROMA's GAP features, before the contrastive head)."""
        return self._encode(batch, modality).mean(dim=1)

    def embed(self, batch: dict[str, Tensor], modality: str) -> Tensor:
        """L2-normalised (B, D) embedding of one modality, all patches (no masking)."""
        return self.heads[modality](self._encode(batch, modality))

    def _encode(self, batch: dict[str, Tensor], modality: str) -> Tensor:
        if modality not in self.encoders:
            raise KeyError(f"{modality!r} is not encoded by config {self.cfg.name!r}; "
                           f"choose one of {self.modalities}")
        img = batch[modality]
        if img.shape[-1] != img.shape[-2]:
            raise ValueError(f"images must be square, got {tuple(img.shape[-2:])}")
        grid = img.shape[-1] // self.cfg.patch_size
        tile_m = batch["tile_size_m"].to(img.device, torch.float32).reshape(img.shape[0])
        return self.encoders[modality](patchify(img, self.cfg.patch_size),
                                       coords(tile_m, grid, self.l_ref_m, self.cfg.bias_units))


def _group_by_mask(masked_ids: dict[str, Tensor]) -> dict[int, list[str]]:
    """Modalities grouped by the masked-id tensor they share (by identity): {id: [modalities]}."""
    groups: dict[int, list[str]] = {}
    for m, t in masked_ids.items():
        groups.setdefault(id(t), []).append(m)
    return groups


def _init_weights(module: nn.Module) -> None:
    """timm/MAE init: truncated-normal(0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
