"""Optimisation settings and the optimizer: AdamW without decay on 1-D parameters, and the learning
rate as a pure function of the step (linear warmup, then cosine decay), so no scheduler state is needed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class TrainConfig:
    """Optimisation and run settings (model settings live in the model's own config)."""

    steps: int = 1000
    batch_size: int = 32  # per rank
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping
    device: str = "cpu"
    amp: bool = True  # bf16 autocast, only on CUDA
    compile: bool = False
    deterministic: bool = False
    seed: int = 0
    log_every: int = 10  # TensorBoard scalars every N steps (the bar updates every step)
    checkpoint_every: int = 0  # 0: only at the end of the run
    keep_checkpoints: int = 2
    progress: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to `lr`, then cosine to lr*min_lr_ratio."""
    warmup = max(0, min(cfg.warmup_steps, cfg.steps - 1))
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    span = max(1, cfg.steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms, scalars (temperature) and other 1-D parameters."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas)}
    if cfg.deterministic:
        kwargs["foreach"] = False  # one fixed kernel order
    return torch.optim.AdamW(groups, **kwargs)
