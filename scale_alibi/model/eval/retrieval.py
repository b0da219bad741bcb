"""Cross-modal retrieval: for each tile's query embedding (S1), is its own tile's target (S2) the nearest?

Top-1 over N held-out tiles: chance is 1/N. Embeddings are L2-normalised, so nearest = highest cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel
from scale_alibi.model.train.trainer import batch_size_of, move_batch


@dataclass(frozen=True)
class RetrievalResult:
    top1: float  # fraction of queries whose nearest target is their own tile
    n: int  # number of tiles (queries = targets)

    @property
    def chance(self) -> float:
        return 1.0 / self.n

    @property
    def over_chance(self) -> float:
        return self.top1 / self.chance


@torch.no_grad()
def embed_all(model: ScaleAlibiModel, data: Mapping[str, Any], modality: str, device: str | torch.device = "cpu",
              chunk: int = 64, prepare: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None) -> torch.Tensor:
    """`model.embed(batch, modality)` over every sample of `data`, in chunks; (N, D) float32 on CPU."""
    was_training = model.training
    model.eval()
    n = batch_size_of(dict(data))
    out = []
    try:
        for i in range(0, n, chunk):
            part = {k: v[i : i + chunk] for k, v in data.items() if isinstance(v, torch.Tensor)}
            part = move_batch(part, torch.device(device))
            if prepare is not None:
                part = prepare(part)
            out.append(model.embed(part, modality).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def top1_from_embeddings(query: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows i whose most similar target row is i (ties count as misses)."""
    sim = query @ target.T
    own = sim.diagonal()
    # strictly best: a tie with another tile is not a hit (an untrained constant embedding scores 0)
    others = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool), float("-inf")).amax(dim=1)
    return float((own > others).float().mean())


def retrieval_top1(model: ScaleAlibiModel, data: Mapping[str, Any], query: str = "s1", target: str = "s2",
                   device: str | torch.device = "cpu",
                   prepare: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None) -> RetrievalResult:
    """Top-1 retrieval of `target` by `query` over all tiles of `data` (e.g. the held-out split)."""
    q = embed_all(model, data, query, device, prepare=prepare)
    t = embed_all(model, data, target, device, prepare=prepare)
    return RetrievalResult(top1_from_embeddings(q, t), len(q))
