"""Losses: InfoNCE over the three distinct modality pairs (gathered across DDP ranks with
gradients) and MAE reconstruction on masked patches against per-patch-normalised targets.

The paper's Eq. 3 drops the log of InfoNCE and its public code contrasts hires with itself;
here each *distinct* pair (s1-s2, s1-naip, s2-naip) gets a symmetric cross-entropy InfoNCE and
the pairs are averaged. Its Eq. 5 sums signed differences; here it is the MSE of CROMA/MAE.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from scale_alibi.model.nn.vit import gather_tokens


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when none is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x (n, D) from every rank in rank order, keeping gradients to each rank's rows.

    torch.distributed.nn.functional.all_gather's backward sends each rank its rows' gradients
    (summed over ranks), which plain dist.all_gather (CROMA's code) silently drops.
    """
    _, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between L2-normalised a, b (n, D) whose row i are positives.

    Under DDP each rank scores its own rows against every rank's rows (gathered with gradients)
    and returns the mean over its rows; DDP's gradient averaging over ranks (equal n per rank)
    then equals the single-process gradient on the union batch.
    """
    rank, _ = _world()
    a, b = a.float(), b.float()  # logits in fp32 even under bf16 autocast
    all_a, all_b = gather_with_grad(a), gather_with_grad(b)
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    loss_ab = F.cross_entropy(logit_scale * a @ all_b.t(), labels)
    loss_ba = F.cross_entropy(logit_scale * b @ all_a.t(), labels)
    return (loss_ab + loss_ba) / 2


class ContrastiveLoss(nn.Module):
    """Mean symmetric InfoNCE over all distinct pairs of modalities, learnable clamped temperature."""

    def __init__(self, temperature_init: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        self.max_log = math.log(max_logit_scale)

    @property
    def logit_scale(self) -> Tensor:
        """1/temperature, clamped to [1, max_logit_scale] (CLIP) so the logits cannot blow up."""
        return self.log_logit_scale.clamp(0.0, self.max_log).exp()

    def forward(self, embeddings: dict[str, Tensor]) -> tuple[Tensor, dict[tuple[str, str], Tensor]]:
        """embeddings: modality -> (n, D) L2-normalised. Returns (mean loss, per-pair losses)."""
        scale = self.logit_scale
        pairs = {(m1, m2): info_nce(embeddings[m1], embeddings[m2], scale)
                 for m1, m2 in itertools.combinations(embeddings, 2)}  # distinct pairs only
        return torch.stack(list(pairs.values())).mean(), pairs


def normalise_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch normalisation of (..., P) pixel vectors to mean 0, std 1 (MAE's norm_pix_loss).

    One fused layer_norm pass (biased variance; MAE's unbiased variance differs by P/(P-1),
    under 0.2% for P >= 512) instead of separate mean/var/sub/div passes over the pixels.
    """
    return F.layer_norm(target, target.shape[-1:], eps=eps)


def masked_patch_mse(pred: Tensor, target: Tensor, ids_masked: Tensor) -> Tensor:
    """MSE of predictions for the masked patches against their per-patch-normalised targets.

    pred (B, M, S*P): predictions for the patches ids_masked (B, M); target (B, N, S, P) or
    (B, N, P): every patch's pixels, S sub-patches each normalised on its own (NAIP's 2x2 hires
    children of a low-res patch). Only the M masked patches are gathered and normalised, so kept
    patches cost nothing and cannot contribute.
    """
    picked = gather_tokens(target, ids_masked)  # (B, M, [S,] P)
    picked = normalise_patches(picked.float()).reshape(pred.shape)
    return F.mse_loss(pred.float(), picked)

