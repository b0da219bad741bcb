"""Per-channel normalisation of the loader's uint8 tensors with a release's `curate stats` stats.json."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import CHANNELS, MODALITIES


def load_stats(path: str | Path) -> dict[str, dict[str, list[float]]]:
    """Per-modality channel mean/std from a `curate stats` stats.json (values on the 0..255 scale)."""
    data = json.loads(Path(path).read_text())
    return data["modalities"]


class Normalize:
    """(x - mean) / std per channel with a release's stats (0..255 scale), on the batch's device.

    Works on samples (C, H, W) and batches (B, C, H, W); modalities without stats pass through.
    Runs after the uint8 batch has been moved to its device, so workers never ship floats.
    """

    def __init__(self, stats: Mapping[str, Mapping[str, Sequence[float]]]):
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in MODALITIES:
            if m not in stats:
                continue
            mean = torch.tensor(stats[m]["mean"], dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(stats[m]["std"], dtype=torch.float32).clamp_min(1e-6).view(-1, 1, 1)
            if mean.shape[0] != CHANNELS[m]:
                raise UserError(f"stats for {m} have {mean.shape[0]} channels, expected {CHANNELS[m]}; rerun `curate stats`")
            self.stats[m] = (mean, std)

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for m, (mean, std) in self.stats.items():
            if m in out:
                x = out[m]
                out[m] = (x.float() - mean.to(x.device)) / std.to(x.device)
        return out
