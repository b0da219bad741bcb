"""Per-channel normalisation of the loader's uint8 tensors with a release's `curate stats` stats.json."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import CHANNELS, MODALITIES


def load_stats(path: str | Path, modalities: Sequence[str] = MODALITIES) -> dict[str, dict[str, list[float]]]:
    """Per-modality channel mean/std from a `curate stats` stats.json (values on the 0..255 scale),
    checked by `check_stats` (UserError, one line, for a file that is not one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise UserError(f"--stats {path} cannot be read ({reason}); pass the stats.json "
                        "`curate stats` wrote beside the training release's manifest") from None
    return check_stats(data, f"--stats {path}", modalities)


def check_stats(data: object, where: str, modalities: Sequence[str] = MODALITIES) -> dict[str, dict[str, list[float]]]:
    """The mean/std of each of `modalities` in `data`, a `curate stats` document or its
    "modalities" part: per modality CHANNELS[m] finite means and positive finite stds, else
    UserError naming `where`. Anything else is refused rather than silently replaced by
    constants: GEO-Bench's band_stats.json (per band, reflectance scale) is JSON too."""
    hint = ("pass the training release's stats.json from `curate stats` (GEO-Bench's band_stats.json "
            "is per band, not per modality)")
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a JSON object of per-modality mean/std; {hint}")
    per_modality = data.get("modalities", data)
    out: dict[str, dict[str, list[float]]] = {}
    for m in modalities:
        entry = per_modality.get(m) if isinstance(per_modality, dict) else None
        mean = _channels(entry.get("mean"), CHANNELS[m]) if isinstance(entry, dict) else None
        std = _channels(entry.get("std"), CHANNELS[m]) if isinstance(entry, dict) else None
        if mean is None or std is None or not all(c > 0 for c in std):
            raise UserError(f"{where} has no {m} mean and std of {CHANNELS[m]} channels (std > 0); {hint}")
        out[m] = {"mean": mean, "std": std}
    return out


def _channels(value: object, n: int) -> list[float] | None:
    """`value` as n finite floats, or None when it is not a list of n finite numbers."""
    if not isinstance(value, list) or len(value) != n:
        return None
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in value):
        return None
    return [float(c) for c in value]


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
