"""The trainer's data: the streaming loader as a resumable, endless BatchSource, and batch preparation.

DDP and unequal ranks: the trainer is step-based (every rank runs the same number of optimizer
steps of the same batch size), so ranks stay in lockstep by construction; a rank that reaches the
end of its share of an epoch continues into its own next epoch, and no samples are dropped for
lockstep. The one remainder dropped: a DataLoader worker's last, partial batch of each epoch (at
most ``num_workers * (batch_size - 1)`` samples per rank per epoch, different samples every epoch
since the permutation changes), because fixed batch shapes are what the cross-rank embedding gather
needs. Dropped batches still count as consumed, so resume skips them exactly as the run did.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from scale_alibi.contract.names import ENCODED_MODALITIES
from scale_alibi.contract.reader import StoredRelease
from scale_alibi.model.train.trainer import batch_size_of

log = logging.getLogger(__name__)

IMAGE_KEYS = ENCODED_MODALITIES  # what the model reads; "naip" (256 px) is not used
# Fallback when no stats.json is available: uint8 -> roughly zero-mean, unit-scale floats.
FALLBACK_MEAN, FALLBACK_STD = 127.5, 64.0


class PrepareBatch:
    """The model's view of a loader batch, computed on the batch's device (after the uint8 copy):
    images normalised per channel with the release's stats (fixed constants for a modality that has
    none), tile_size_m, and the optional fixed MAE mask."""

    def __init__(self, stats: Mapping[str, Any] | None = None):
        from scale_alibi.contract.release import CHANNELS
        from scale_alibi.model.data.transforms import Normalize

        stats = dict(stats or {})
        # Modalities normalised with the fixed constants: recorded with the stats in checkpoints.
        self.fixed_constants = tuple(m for m in IMAGE_KEYS if m not in stats)
        for m in IMAGE_KEYS:  # a modality without stats gets the fixed constants, same mechanism
            stats.setdefault(m, {"mean": [FALLBACK_MEAN] * CHANNELS[m], "std": [FALLBACK_STD] * CHANNELS[m]})
        self.normalize = Normalize(stats)
        self.stats = {m: {"mean": [float(v) for v in stats[m]["mean"]], "std": [float(v) for v in stats[m]["std"]]}
                      for m in IMAGE_KEYS}

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores of this normalisation: every modality's mean/std as used, and
        which of them were the fixed constants (their release had no stats)."""
        return {"modalities": self.stats, "fixed_constants": list(self.fixed_constants)}

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = self.normalize({k: batch[k] for k in IMAGE_KEYS})
        if "tile_size_m" in batch:
            out["tile_size_m"] = batch["tile_size_m"].float()
        else:
            from scale_alibi.contract.tiles import tile_ground_size_m

            out["tile_size_m"] = torch.tensor(
                [tile_ground_size_m(int(z), int(y)) for z, y in zip(batch["z"], batch["y"])], dtype=torch.float32
            )
        if "mask" in batch:
            out["mask"] = batch["mask"]
        return out


def fetch_stats(url: str, release: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The release's stats.json from the server (GET /releases/{release}/stats.json), or None if it has none."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/releases/{release}/stats.json", timeout=timeout_s) as r:
            data = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data.get("modalities", data)


def stored_stats(release: StoredRelease) -> dict[str, Any] | None:
    """`fetch_stats` for a release read from its store: the stats.json beside its manifest, or None."""
    from scale_alibi.contract.errors import UserError
    from scale_alibi.contract.release import STATS_NAME

    raw = release.read(STATS_NAME)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise UserError(f"{release.location}/{STATS_NAME} is not JSON; run `curate stats` again") from None
    return data.get("modalities", data) if isinstance(data, dict) else None


def fetch_release_zoom(url: str, release: str, timeout_s: float = 10.0) -> int | None:
    """The zoom of a served release's triplets (GET /releases/{release}), or None if unknown."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/releases/{release}", timeout=timeout_s) as r:
            zooms = json.loads(r.read()).get("zooms") or []
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return int(zooms[-1]) if zooms else None


class StreamSource:
    """A `scale_alibi.model.train.trainer.BatchSource` over `scale_alibi.model.data.loader.TripletStream`: epochs forever, resumable mid-epoch."""

    def __init__(
        self,
        url: str,
        release: str,
        batch_size: int,
        *,
        num_workers: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        shard_size: int = 32,
        shuffle_buffer: int = 64,
    ) -> None:
        from scale_alibi.model.data.loader import StreamProgress, TripletStream

        self.dataset = TripletStream(
            url, release, split=split, shard_size=shard_size, seed=seed, rank=rank,
            world_size=world_size, shuffle_buffer=shuffle_buffer, modalities=IMAGE_KEYS,
        )
        self.batch_size, self.num_workers = batch_size, num_workers
        self.progress = StreamProgress(max(1, num_workers), epoch=0, seed=seed, world_size=world_size)
        self._resumed = False
        self._dropped: list[dict[str, Any]] = []  # partial batches seen since the last consumed one
        if len(self.dataset) < batch_size:
            from scale_alibi.contract.errors import UserError

            raise UserError(f"rank {rank} holds {len(self.dataset)} {split} triplets, fewer than one batch of {batch_size}; use a smaller --batch-size")

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    def _loader(self):
        from scale_alibi.model.data.loader import make_loader

        return make_loader(self.dataset, self.batch_size, num_workers=self.num_workers)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if not self._resumed:
                self.dataset.set_epoch(self.progress.epoch)
            self._resumed = False
            loader = self._loader()
            # Starting workers draws a base seed from torch's global RNG: keep that RNG untouched so
            # the MAE masks of a resumed run are the uninterrupted run's (the loader's order does not
            # depend on worker seeds).
            with torch.random.fork_rng(devices=[]):
                it = iter(loader)
            for batch in it:
                if batch_size_of(batch) < self.batch_size:
                    self._dropped.append({k: batch[k] for k in ("worker", "z", "epoch") if k in batch})
                    continue
                yield batch
            self._dropped.clear()
            self.progress.reset(self.progress.epoch + 1)

    def consumed(self, batch: dict[str, torch.Tensor]) -> None:
        for dropped in self._dropped:  # in DataLoader order, before the batch that followed them
            self.progress.update(dropped)
        self._dropped.clear()
        self.progress.update(batch)

    def state_dict(self) -> dict[str, Any]:
        return self.progress.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self.progress.load_state_dict(state)
        self._resumed = True


class DatasetSource:
    """A `scale_alibi.model.train.trainer.BatchSource` over `scale_alibi.model.data.dataset.ReleaseDataset`:
    a release read from its store, no server. Epochs forever in the epoch's order; rank r takes shards
    r, r + R, ... as from the server; each epoch's last partial batch is dropped; resumable at a batch."""

    def __init__(self, data: str, release: str, batch_size: int, *, num_workers: int = 2, seed: int = 0,
                 rank: int = 0, world_size: int = 1, split: str = "train", shard_size: int = 32) -> None:
        from scale_alibi.contract.release import shard_count
        from scale_alibi.model.data.dataset import ReleaseDataset
        from scale_alibi.model.data.order import rank_shards

        self.dataset = ReleaseDataset(data, release, split=split, shard_size=shard_size, seed=seed,
                                      modalities=IMAGE_KEYS)
        n = len(self.dataset)
        self.indices = [i for s in rank_shards(shard_count(n, shard_size), rank, world_size)
                        for i in range(s * shard_size, min(n, (s + 1) * shard_size))]
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed, self.world_size = seed, world_size
        self.epoch, self.done = 0, 0  # samples of this epoch's share consumed
        if len(self.indices) < batch_size:
            from scale_alibi.contract.errors import UserError

            raise UserError(f"rank {rank} holds {len(self.indices)} {split} triplets, fewer than one batch of "
                            f"{batch_size}; use a smaller --batch-size")

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        from torch.utils.data import DataLoader

        from scale_alibi.model.data.delivery import Delivery
        from scale_alibi.model.data.loader import collate_triplets

        while True:
            self.dataset.set_epoch(self.epoch)
            whole = len(self.indices) // self.batch_size * self.batch_size
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.indices[self.done:whole],
                                num_workers=self.num_workers, collate_fn=collate_triplets, drop_last=True,
                                pin_memory=torch.cuda.is_available())
            with torch.random.fork_rng(devices=[]):  # as StreamSource: worker seeds leave the MAE masks alone
                # a worker that cannot deliver (killed, shared memory full) is one error line from next()
                it = Delivery(loader.__iter__, expected=whole - self.done)
            yield from it
            self.epoch, self.done = self.epoch + 1, 0

    def consumed(self, batch: dict[str, torch.Tensor]) -> None:
        self.done += batch_size_of(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"source": "dataset", "epoch": self.epoch, "consumed": self.done, "seed": self.seed,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from scale_alibi.contract.errors import UserError

        if state.get("source") != "dataset" or int(state["seed"]) != self.seed or int(state["world_size"]) != self.world_size:
            raise UserError("the checkpoint's loader state is not a --data run with this seed and world size; "
                            "resume with the same --data/--server, --seed and number of ranks")
        self.epoch, self.done = int(state["epoch"]), int(state["consumed"])


def collect_split(url: str, release: str, split: str = "heldout", limit: int | None = None,
                  batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Every triplet of a split (or the first `limit`) as one uint8 batch dict, in the split's epoch-0 order."""
    from scale_alibi.model.data.loader import TripletStream, collate_triplets

    ds = TripletStream(url, release, split=split, shard_size=batch_size, seed=0, shuffle_buffer=1, modalities=IMAGE_KEYS)
    samples = []
    for sample in ds:
        samples.append(sample)
        if limit is not None and len(samples) >= limit:
            break
    for s in samples:
        s["worker"] = 0
    return collate_triplets(samples)


def collect_stored_split(data: str, release: str, split: str = "heldout", limit: int | None = None,
                         batch_size: int = 64) -> dict[str, torch.Tensor]:
    """`collect_split` of a release read from its store: the split's epoch-0 order (seed 0), no server."""
    from scale_alibi.model.data.dataset import ReleaseDataset
    from scale_alibi.model.data.loader import collate_triplets

    ds = ReleaseDataset(data, release, split=split, shard_size=batch_size, seed=0, modalities=IMAGE_KEYS)
    return collate_triplets([ds[i] for i in range(min(len(ds), limit if limit is not None else len(ds)))])
