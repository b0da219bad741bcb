"""The training loop: AdamW, linear warmup + cosine decay, gradient clipping, bf16 autocast on CUDA,
optional torch.compile, DistributedDataParallel under torchrun, a tqdm bar, TensorBoard, exact resume.

The trainer is step-based: every rank runs exactly `steps` optimizer steps of `batch_size` samples each,
which keeps DDP ranks in lockstep by construction even when ranks hold unequal numbers of samples;
a rank that reaches the end of its share of an epoch simply continues into its next epoch.

Exact resume: a checkpoint stores the model and optimizer tensors, the step, the data source's state
(samples consumed by this trainer, per rank) and the torch/numpy/python RNG states (the MAE masks are
drawn from torch's global RNG). The learning rate is a pure function of the step, so no scheduler
state is needed. With `deterministic=True` on CPU a resumed run repeats the uninterrupted run's losses.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from scale_alibi.model.train import checkpoint as ckpt
from scale_alibi.model.train.distributed import current_dist, set_deterministic
from scale_alibi.model.train.host_memory import retain_freed_memory
from scale_alibi.model.train.optim import TrainConfig, build_optimizer, lr_at

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """What the trainer needs from its data: endless batches and a resumable consumption state."""

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches forever (epoch after epoch), starting where the state says."""

    def consumed(self, batch: dict[str, torch.Tensor]) -> None:
        """Called once per batch after its optimizer step: the batch now counts as consumed."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that makes `batches()` continue after the last consumed batch."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state returned by `state_dict` (before calling `batches`)."""


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch on `device` (non_blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of samples in a batch (leading dim of its first tensor)."""
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    raise ValueError("batch has no tensors")


# ---------------------------------------------------------------- the trainer

@dataclass
class StepResult:
    step: int
    loss: float
    parts: dict[str, float] = field(default_factory=dict)
    grad_norm: float = float("nan")
    lr: float = 0.0


class Trainer:
    """Trains a model whose `forward(batch)` returns a dict with a scalar "loss" (plus logged parts)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        run_dir: Path | str | None = None,
        model_config: dict[str, Any] | None = None,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        """`normalization`: the per-modality mean/std `prepare` normalises with (`PrepareBatch.record()`),
        stored in every checkpoint so that an evaluation normalises as training did."""
        self.cfg = cfg
        self.normalization = normalization
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_config = model_config or {}
        self.prepare = prepare or (lambda b: b)
        self.dist = current_dist()
        self.device = torch.device(cfg.device)
        if cfg.deterministic:
            set_deterministic(True)
        if self.device.type == "cpu":
            retain_freed_memory()  # ~1.5x faster CPU steps (scale_alibi.model.train.host_memory)
        self.module = model.to(self.device)  # the raw module: checkpoints and embeddings use it
        self.optimizer = build_optimizer(self.module, cfg)
        wrapped: nn.Module = self.module
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        if cfg.compile:
            compiled = torch.compile(wrapped)
            if not isinstance(compiled, nn.Module):  # torch.compile of a Module gives an OptimizedModule
                raise TypeError(f"torch.compile returned a {type(compiled).__name__}, not a module")
            wrapped = compiled
        self.model = wrapped
        self.step = 0
        self.epoch = 0
        self.losses: list[float] = []  # per step of this process's run (after any resume)
        self._writer = None

    # ---- one optimisation step

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (no loss scaling needed for bf16); nothing on CPU."""
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward_backward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward and backward of one batch (gradients left in .grad, synchronised by DDP)."""
        self.model.train()
        batch = self.prepare(move_batch(batch, self.device))  # uint8 over the bus, floats on the device
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(batch)
        out["loss"].backward()
        return out

    def train_step(self, batch: dict[str, Any]) -> StepResult:
        """One optimizer step on `batch` at the current step's learning rate."""
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self.forward_backward(batch)
        loss = out["loss"].detach().float()
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.detach().norm() for p in self.module.parameters() if p.grad is not None])
            )
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            self.optimizer.step()
        else:  # one bad batch must not poison the weights: skip it, say so
            log.warning("step %d: non-finite loss/grad (%s, %s), optimizer step skipped", self.step, loss, grad_norm)
        parts = {k: float(v.detach().float()) for k, v in out.items()
                 if k != "loss" and isinstance(v, torch.Tensor) and v.ndim == 0}
        result = StepResult(self.step, float(loss), parts, float(grad_norm), lr)
        self.step += 1
        self.losses.append(result.loss)
        return result

    # ---- the loop

    def fit(self, source: BatchSource, resume: bool = False, stop_at: int | None = None) -> list[float]:
        """Run to `cfg.steps` (or stop early at `stop_at`, checkpointing there), optionally resuming first.

        `stop_at` interrupts the run without changing its schedule: resuming it later continues the
        same learning-rate curve, as if the process had been killed after that step's checkpoint.
        """
        resumed = self.resume(source) if resume else False
        rng_state = self._resume_rng if resumed else ckpt.get_rng_state()
        it = source.batches()
        # Starting the data iterator (DataLoader workers, prefetch) may draw from the global RNG:
        # put it back so step k+1 sees exactly the RNG state saved at step k.
        if rng_state is not None:
            ckpt.set_rng_state(rng_state)
        bar = self._progress()
        sps = _Rate()
        tick = time.perf_counter()
        try:
            end = self.cfg.steps if stop_at is None else min(stop_at, self.cfg.steps)
            while self.step < end:
                batch = next(it)
                n = batch_size_of(batch)
                result = self.train_step(batch)
                source.consumed(batch)
                now = time.perf_counter()
                sps.update(n * self.dist.world_size, now - tick)
                tick = now
                self._report(result, sps.value, bar)
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 and self.step < self.cfg.steps:
                    self.save(source)
        finally:
            if bar is not None:
                bar.close()
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if self.run_dir is not None:
            self.save(source)
        if self._writer is not None:
            self._writer.flush()
        return self.losses

    # ---- checkpoints

    def save(self, source: BatchSource | None) -> Path | None:
        """Checkpoint now (collective under DDP: every rank's loader state goes into the sidecar)."""
        if self.run_dir is None:
            return None
        # Per-rank state: each rank's loader position and RNG (ranks draw different MAE masks).
        mine = {"loader": source.state_dict() if source is not None else None, "rng": ckpt.get_rng_state()}
        states: list[dict[str, Any] | None] = [mine]
        if self.dist.world_size > 1:
            states = [None] * self.dist.world_size
            dist.all_gather_object(states, mine)
        path = None
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                self.run_dir, self.step, self.module, self.optimizer,
                {
                    "epoch": self.epoch,
                    "ranks": states,
                    "train_config": self.cfg.to_json(),
                    "model_config": self.model_config,
                    "world_size": self.dist.world_size,
                    **({ckpt.NORMALIZATION_KEY: self.normalization} if self.normalization is not None else {}),
                },
                keep=self.cfg.keep_checkpoints,
            )
        if self.dist.world_size > 1:
            dist.barrier()
        return path

    _resume_rng: dict[str, Any] | None = None

    def resume(self, source: BatchSource | None, path: Path | None = None) -> bool:
        """Load the latest (or given) checkpoint into model, optimizer, source and RNG; False if none."""
        if path is None:
            if self.run_dir is None:
                return False
            path = ckpt.latest_checkpoint(self.run_dir)
            if path is None:
                return False
        sidecar = ckpt.load_checkpoint(path, self.module, self.optimizer, map_location=self.device)
        self.step = int(sidecar["step"])
        self.epoch = int(sidecar.get("epoch", 0))
        states = sidecar["ranks"]
        if len(states) != self.dist.world_size:
            raise ValueError(f"checkpoint {path} was written by {len(states)} ranks, this run has {self.dist.world_size}")
        mine = states[self.dist.rank]
        if source is not None and mine["loader"] is not None:
            source.load_state_dict(mine["loader"])
        self._resume_rng = mine["rng"]  # applied by fit() once the data iterator has started
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # ---- reporting

    def _progress(self):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _report(self, r: StepResult, samples_per_s: float, bar) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{r.loss:.4f}", sps=f"{samples_per_s:.1f}", lr=f"{r.lr:.2e}")
        if not self.dist.is_main or self.run_dir is None:
            return
        if r.step % max(1, self.cfg.log_every) and r.step != self.cfg.steps - 1:
            return
        writer = self.writer()
        writer.add_scalar("train/loss", r.loss, r.step)
        for k, v in r.parts.items():
            writer.add_scalar(f"train/{k}", v, r.step)
        writer.add_scalar("train/lr", r.lr, r.step)
        writer.add_scalar("train/grad_norm", r.grad_norm, r.step)
        writer.add_scalar("train/samples_per_s", samples_per_s, r.step)

    def writer(self):
        """The run's TensorBoard SummaryWriter (rank 0 only), created on first use."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Rate:
    """Exponential moving average of samples per second (robust to one slow step)."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha, self.value = alpha, 0.0

    def update(self, samples: int, seconds: float) -> None:
        rate = samples / max(seconds, 1e-9)
        self.value = rate if self.value == 0.0 else (1 - self.alpha) * self.value + self.alpha * rate
