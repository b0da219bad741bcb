"""Supervised read-outs of frozen features: an MLP probe (one hidden layer of 2048, trained on
train, the epoch chosen on valid, reported on test) and k-nearest neighbours (k = 20, cosine)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

KNN_K = 20
MLP_HIDDEN = 2048


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray,
                k: int = KNN_K) -> np.ndarray:
    """Majority vote of each query's k most cosine-similar training samples; a tied vote goes to
    the class whose voters are most similar in sum."""
    train = F.normalize(torch.from_numpy(train_x).float(), dim=1)
    query = F.normalize(torch.from_numpy(query_x).float(), dim=1)
    k = min(k, len(train))
    sims, idx = (query @ train.T).topk(k, dim=1)
    labels = torch.from_numpy(train_y).long()[idx]  # (Q, k)
    n_classes = int(max(train_y.max(), 0)) + 1
    votes = F.one_hot(labels, n_classes).float()  # (Q, k, C)
    # similarity sums lie in [-k, k]: scaled below 1/2 they only ever break ties between counts
    score = votes.sum(1) + (votes * sims[..., None]).sum(1) / (2 * k + 1)
    return score.argmax(1).numpy()


@dataclass(frozen=True)
class ProbeResult:
    """Test predictions of the epoch with the best validation accuracy."""

    test_pred: np.ndarray
    best_epoch: int
    valid_accuracy: float


def mlp_probe(train: tuple[np.ndarray, np.ndarray], valid: tuple[np.ndarray, np.ndarray],
              test_x: np.ndarray, n_classes: int, epochs: int = 100, lr: float = 1e-3,
              batch_size: int = 256, seed: int = 0, device: str = "cpu") -> ProbeResult:
    """Train Linear(D, 2048) -> ReLU -> Linear(2048, C) on standardised train features with
    AdamW; keep the epoch whose validation accuracy is best; predict test with it."""
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = (torch.from_numpy(a) for a in train)
    mean, std = x_tr.float().mean(0), x_tr.float().std(0).clamp_min(1e-6)

    def prep(x: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(x).float() - mean) / std).to(device)

    x_tr, y_tr = prep(train[0]), y_tr.long().to(device)
    x_va, y_va, x_te = prep(valid[0]), torch.from_numpy(valid[1]).long().to(device), prep(test_x)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x_tr.shape[1], MLP_HIDDEN), nn.ReLU(),
                        nn.Linear(MLP_HIDDEN, n_classes)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    best: ProbeResult | None = None
    for epoch in range(epochs):
        net.train()
        for batch in torch.randperm(len(x_tr), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(net(x_tr[batch]), y_tr[batch]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(x_va).argmax(1) == y_va).float().mean())
            if best is None or acc > best.valid_accuracy:
                best = ProbeResult(net(x_te).argmax(1).cpu().numpy(), epoch, acc)
    if best is None:
        raise ValueError(f"epochs={epochs}: a probe needs at least one epoch to predict with")
    return best
