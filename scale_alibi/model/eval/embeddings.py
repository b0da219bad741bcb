"""Frozen features per encoder column: checkpoints loaded as trained, images resized to the
column's resolution and normalised with the training release's stats, mean-pooled final tokens.

Columns (the paper's Table 2): SA-high = the NAIP encoder at 512 px, SA-low = the S2 encoder at
256 px, both from a Scale-ALiBi checkpoint; CROMA = the optical (S2) encoder of a `croma`
checkpoint at 256 px. Every image keeps its true ground width, so Scale-ALiBi's bias sees the
task's real ground sample distance whatever the resize.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

from scale_alibi.contract.errors import UserError
from scale_alibi.model.data.transforms import check_stats
from scale_alibi.model.eval.task import Split
from scale_alibi.model.nn.config import config_from_dict
from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel
from scale_alibi.model.train.checkpoint import NORMALIZATION_KEY, STATE_FILE, latest_checkpoint, load_checkpoint


@dataclass(frozen=True)
class Column:
    """One encoder column of the table: its name, the model's modality and the image side."""

    name: str
    modality: str
    px: int


SA_HIGH = Column("SA-high", "naip_hires", 512)
SA_LOW = Column("SA-low", "s2", 256)
CROMA = Column("CROMA", "s2", 256)
COLUMNS = (SA_HIGH, SA_LOW, CROMA)  # the paper's column order


def checkpoint_dir(path: Path) -> Path:
    """A checkpoint directory from itself or from a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise UserError(f"{path} is neither a checkpoint nor a run directory with one; "
                        "pass RUN_DIR or RUN_DIR/checkpoints/step-N")
    return latest


def _state(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's state.json (UserError when it is not a JSON object)."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (ValueError, OSError):
        state = None
    if not isinstance(state, dict):
        raise UserError(f"{ckpt / STATE_FILE} is not a checkpoint's JSON state; pass a checkpoint "
                        "written by `curate train`")
    return state


def load_model(path: Path, device: str = "cpu") -> ScaleAlibiModel:
    """The model of a checkpoint (or a run directory's latest), in eval mode on `device`."""
    ckpt = checkpoint_dir(path)
    stored = _state(ckpt).get("model_config")
    if not stored:
        raise UserError(f"{ckpt} stores no model_config; it was not written by `curate train`")
    try:
        model = ScaleAlibiModel(config_from_dict(stored))
        load_checkpoint(ckpt, model)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # what safetensors, torch's strict load and the config raise on a damaged or foreign checkpoint
        reason = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:120]}"
        raise UserError(f"checkpoint {ckpt} cannot be loaded ({reason}); pass an intact checkpoint "
                        "written by `curate train`") from None
    return model.to(device).eval()


def eval_stats(path: Path, given: dict[str, dict[str, list[float]]] | None, modalities: Sequence[str],
               echo: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """The per-modality mean/std to evaluate the checkpoint at `path` with: `given` (--stats) when
    passed, else the stats the checkpoint records it trained with. Never a silent fallback: a
    checkpoint that records none is refused, and one trained with the fixed constants is said so."""
    ckpt = checkpoint_dir(path)
    record = _state(ckpt).get(NORMALIZATION_KEY)
    if given is not None:
        trained = record.get("modalities") if isinstance(record, dict) else None
        if isinstance(trained, dict) and any(trained.get(m) != v for m, v in given.items()):
            echo(f"note: checkpoint {ckpt} was trained with other normalisation stats; evaluating with --stats")
        return given
    if record is None:
        raise UserError(f"checkpoint {ckpt} does not record the normalisation stats it was trained with "
                        "(it predates that record); pass --stats with the training release's stats.json")
    stats = check_stats(record, f"checkpoint {ckpt}'s normalisation record", modalities)
    fixed = [m for m in record.get("fixed_constants", []) if m in modalities]
    if fixed:
        echo(f"note: checkpoint {ckpt} was trained with fixed normalisation constants for {', '.join(fixed)} "
             "(its release had no stats.json); evaluating with the same")
    return stats


def columns_of(model: ScaleAlibiModel) -> tuple[Column, ...]:
    """The table columns a model fills: SA-high and SA-low, or CROMA for a `croma` model."""
    return (SA_HIGH, SA_LOW) if model.cfg.use_hires else (CROMA,)


@torch.no_grad()
def frozen_features(model: ScaleAlibiModel, split: Split, column: Column,
                    stats: Mapping[str, Any] | None = None, batch_size: int = 32,
                    device: str = "cpu", progress: bool = False, desc: str = "") -> np.ndarray:
    """(N, D) float32 features of a split's images for one column (see the module docstring)."""
    from scale_alibi.model.train.data import PrepareBatch

    normalize = PrepareBatch(stats).normalize
    images = split.images[column.modality]
    out = []
    for i in tqdm(range(0, len(split), batch_size), desc=desc or column.name, disable=not progress,
                  leave=False):
        x = torch.from_numpy(images[i:i + batch_size]).to(device).float()
        if x.shape[-2:] != (column.px, column.px):
            x = F.interpolate(x, size=(column.px, column.px), mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 255)
        ground = torch.from_numpy(split.tile_size_m[i:i + batch_size]).to(device)
        batch = {column.modality: normalize({column.modality: x})[column.modality],
                 "tile_size_m": ground}
        out.append(model.features(batch, column.modality).float().cpu())
    return torch.cat(out).numpy()
