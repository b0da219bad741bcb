"""A `scale_alibi.model.train.trainer.BatchSource` over tensors held in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from scale_alibi.model.train.trainer import batch_size_of


class InMemorySource:
    """A BatchSource over tensors held in memory (synthetic batches, benchmarks, tests).

    Fixed-size batches of a per-(seed, epoch) permutation; the last partial batch of an epoch is
    dropped (at most batch_size - 1 samples per epoch) so every step has the same shapes.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0) -> None:
        self.tensors = tensors
        self.n = batch_size_of(tensors)
        if batch_size > self.n:
            raise ValueError(f"batch size {batch_size} exceeds the {self.n} samples held")
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0  # index: samples of this epoch consumed by the trainer

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, index = self.epoch, self.index
        while True:
            order = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(self.n))
            while index + self.batch_size <= self.n:
                rows = order[index : index + self.batch_size]
                yield {k: v[rows] for k, v in self.tensors.items()}
                index += self.batch_size
            epoch, index = epoch + 1, 0

    def consumed(self, batch: dict[str, torch.Tensor]) -> None:
        self.index += batch_size_of(batch)
        if self.index + self.batch_size > self.n:
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.seed = int(state.get("seed", self.seed))
