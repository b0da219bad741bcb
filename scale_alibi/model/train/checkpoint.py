"""Training checkpoints: tensors in safetensors, everything else in a JSON sidecar, written atomically.

A checkpoint is a directory ``RUNDIR/checkpoints/step-000123/`` holding

    model.safetensors       the model's state_dict (shared tensors stored once)
    optimizer.safetensors   every tensor of the optimizer's state (``state.<param index>.<name>``)
    state.json              step, epoch, loader state, RNG states, config, optimizer param_groups,
                            the optimizer's non-tensor per-parameter state and the normalisation
                            (per-modality mean/std) the batches were trained with

It is first written as a hidden temporary directory and renamed into place, then ``latest`` (a small
text file naming the directory) is replaced atomically: a crash leaves either the previous checkpoint
or the new one, never a half-written one. Nothing is pickled, so loading a checkpoint runs no code.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from scale_alibi.model.nn.config import ModelConfig, config_from_dict

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
# state.json key: {"modalities": {m: {"mean": [...], "std": [...]}}, "fixed_constants": [m, ...]}
NORMALIZATION_KEY = "normalization"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- RNG state (JSON-serialisable)

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _from_b64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def get_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python RNG states as plain JSON types."""
    legacy = np.random.get_state()
    if not isinstance(legacy, tuple):  # a dict only if the global RandomState's generator was replaced
        raise RuntimeError("numpy's global RandomState is not MT19937, so its state cannot be checkpointed")
    kind, keys, pos, has_gauss, cached = legacy
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by `get_rng_state`."""
    torch.set_rng_state(_from_b64(state["torch"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_from_b64(s) for s in state["cuda"]])


# ---------------------------------------------------------------- optimizer state split

def _split_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into safetensors-able tensors and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON turned tuples (AdamW's betas) into lists: give optimizers back the types they wrote.
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with tensors that share storage stored once (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    if aliases:
        out["__aliases__"] = torch.tensor(list(json.dumps(aliases).encode()), dtype=torch.uint8)
    return out


def _load_model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    raw = tensors.pop("__aliases__", None)
    if raw is not None:
        for name, target in json.loads(bytes(raw.tolist()).decode()).items():
            tensors[name] = tensors[target]
    return tensors


# ---------------------------------------------------------------- save / load

def save_checkpoint(
    run_dir: Path | str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under ``run_dir/checkpoints`` atomically, point ``latest`` at it, keep the last `keep`."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:09d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".step-{step:09d}.", suffix=".tmp"))
    try:
        save_file(_model_tensors(model), str(tmp / MODEL_FILE))
        sidecar = {"format_version": FORMAT_VERSION, "step": int(step), **state}
        if optimizer is not None:
            tensors, rest = _split_optimizer_state(optimizer.state_dict())
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
            sidecar["optimizer"] = rest
        (tmp / STATE_FILE).write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=_json_default))
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():  # re-saving the same step (e.g. at the end of a run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(ckpt_root / LATEST_FILE, final.name)
    _prune(ckpt_root, keep, final.name)
    return final


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    """The directory that ``latest`` names, or None when the run has no checkpoint yet."""
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / LATEST_FILE
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def load_checkpoint(
    path: Path | str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load tensors into `model` (strictly) and `optimizer`; return the JSON sidecar (step, loader, rng, ...)."""
    path = Path(path)
    sidecar = json.loads((path / STATE_FILE).read_text())
    tensors = _load_model_tensors(path / MODEL_FILE)
    model.load_state_dict(tensors, strict=True)
    if optimizer is not None:
        if "optimizer" not in sidecar:
            raise ValueError(f"checkpoint {path} has no optimizer state")
        opt_tensors = load_file(str(path / OPTIMIZER_FILE), device=str(map_location))
        optimizer.load_state_dict(_join_optimizer_state(opt_tensors, sidecar["optimizer"]))
    return sidecar


# ---------------------------------------------------------------- helpers

def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable in checkpoint state: {type(value).__name__}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(ckpt_root: Path, keep: int, current: str) -> None:
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def stored_config(run_dir: Path | str) -> ModelConfig | None:
    """The ModelConfig stored in a run directory's latest checkpoint (None: no checkpoint, or
    one written without its model config)."""
    latest = latest_checkpoint(Path(run_dir))
    stored = json.loads((latest / STATE_FILE).read_text()).get("model_config") if latest else None
    return config_from_dict(stored) if stored else None
