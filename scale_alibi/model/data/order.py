"""The order of an epoch's samples: which shards each rank and DataLoader worker reads, and the
shuffle buffer's output order, as pure functions of (seed, epoch, world_size, num_workers).

An epoch's order over the split's rows is `scale_alibi.contract.release.epoch_permutation(n, seed,
epoch)`, cut into shards of `shard_size` by the server (`shard_rows`). Rank r takes shards r, r + R,
r + 2R, ... (R = world_size) and its DataLoader worker w every num_workers-th of those, starting at
its w-th: every shard goes to exactly one worker of one rank, none twice, none skipped, and a rank's
share does not depend on the worker count. The shuffle buffer's random choices depend only on
(seed, epoch, rank, worker) and on sample *positions* (shard, offset), never on timing
(`ShardPlan.worker_order`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from scale_alibi.contract.release import shard_count


def shard_length(n: int, shard_size: int, index: int) -> int:
    """Number of rows in shard `index` (the last one may be short)."""
    return max(0, min(shard_size, n - index * shard_size))


def rank_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shards of `rank`: rank, rank + R, rank + 2R, ... (independent of the worker count)."""
    return list(range(rank, num_shards, world_size))


def worker_shards(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> list[int]:
    """The shards logical `worker` of `rank` reads, in order: every num_workers-th of the rank's shards."""
    return rank_shards(num_shards, rank, world_size)[worker::num_workers]


def buffer_order(positions: Iterable[tuple[int, int]], buffer_size: int,
                 rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """The output order of a shuffle buffer fed `positions` in order (fill, then emit a random slot and
    refill), lazily: the first sample is known after `buffer_size` inputs, not after the whole epoch."""
    if buffer_size <= 1:
        yield from positions
        return
    buf: list[tuple[int, int]] = []
    for pos in positions:
        if len(buf) < buffer_size:
            buf.append(pos)
            continue
        j = int(rng.integers(len(buf)))
        yield buf[j]
        buf[j] = pos
    rng.shuffle(buf)  # drain the rest in random order
    yield from buf


@dataclass(frozen=True)
class ShardPlan:
    """Everything that fixes an epoch's order: the split's size, shard size, seed, epoch and the worker grid."""

    n: int
    shard_size: int
    seed: int
    epoch: int
    world_size: int
    num_workers: int
    shuffle_buffer: int

    @property
    def num_shards(self) -> int:
        return shard_count(self.n, self.shard_size)

    @property
    def total_workers(self) -> int:
        return self.world_size * self.num_workers

    def worker_order(self, rank: int, worker: int) -> Iterator[tuple[int, int]]:
        """(shard, offset) of every sample that logical `worker` of `rank` yields, in yield order, lazily
        (an epoch of a 10^6-triplet release is not walked before the first sample)."""
        g = rank * self.num_workers + worker
        positions = (
            (s, o)
            for s in self.worker_shards(rank, worker)
            for o in range(shard_length(self.n, self.shard_size, s))
        )
        rng = np.random.default_rng([int(self.seed), int(self.epoch), g, 0x5A11B1])
        return buffer_order(positions, self.shuffle_buffer, rng)

    def worker_shards(self, rank: int, worker: int) -> list[int]:
        """The shards logical `worker` of `rank` reads, in order."""
        return worker_shards(self.num_shards, rank, self.world_size, worker, self.num_workers)

    def worker_samples(self, rank: int) -> list[int]:
        """Samples per logical worker of `rank`."""
        return [
            sum(shard_length(self.n, self.shard_size, s) for s in worker_shards(self.num_shards, rank, self.world_size, w, self.num_workers))
            for w in range(self.num_workers)
        ]
