"""Streaming training loader: triplets from a running `curate serve` as batched tensors.

Use (the trainer wraps this in `scale_alibi.model.train.data.StreamSource`)::

    ds = TripletStream("http://127.0.0.1:8000", "small", split="train", shard_size=64, seed=0,
                       rank=rank, world_size=world)
    loader = make_loader(ds, batch_size=32, num_workers=4)
    normalize = Normalize(load_stats(".../stats.json"))  # model/data/transforms.py; on the batch's device
    progress = StreamProgress.for_loader(loader)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:                 # dict: s1 s2 naip naip_hires z x y tile_size_m + tags
            ...                              # train on normalize(batch), then:
            progress.update(batch)           # the trainer says what it consumed
        state = progress.state_dict()        # small JSON dict; store it in the checkpoint

    # resume mid-epoch: same url/release/split/shard_size/seed/world_size/num_workers
    ds.load_state_dict(state); progress.load_state_dict(state)
    for batch in make_loader(ds, ...): ...   # continues with exactly the batch that came next

**Order.** Which shards each rank and DataLoader worker reads, and the order in which a worker's
shuffle buffer yields their samples, is `scale_alibi.model.data.order`: a pure function, computed lazily
as samples are due (`ShardPlan.worker_order`), so a worker only holds back samples that are not yet due (at most
``shuffle_buffer`` of them, plus ``prefetch`` parsed ones in flight). The DataLoader takes batches
round-robin from its workers, skipping exhausted ones; that is deterministic too, so the whole batch
sequence is a function of (seed, epoch, world_size, num_workers).

**Resume.** Every batch carries the logical worker that produced it (``batch["worker"]``: a
DataLoader batch always comes from one worker), its ``batch["epoch"]``, and each sample its
(``shard``, ``offset``). The trainer counts what it *consumed* with `StreamProgress.update` (not
what workers prefetched); the state is ``{epoch, seed, world_size, num_workers, consumed[worker],
next_worker}``. `TripletStream.load_state_dict` makes each worker skip the first ``consumed[w]``
samples of its order (re-fetching from the server, with ``start=``, only what its buffer still held)
and rotates logical workers onto the DataLoader's physical ones so that its round-robin starts at
``next_worker``: the resumed run yields exactly the batches the uninterrupted run would have. The
resume state applies to iterations until the next `set_epoch`.

**Unequal ranks.** Exactly-once holds at the dataset level, so ranks can get different numbers of
samples (by at most one shard) and batches. The trainer (scale_alibi/model/train/trainer.py) keeps DDP in step by being
step-based: every rank runs the same number of steps and a rank that ends its share of an epoch
continues into its next epoch; it drops each worker's last partial batch (documented in
scale_alibi/model/train/data.py). Alternatives for other trainers: DDP's uneven-input join
(``with model.join(): ...``), or stopping every rank after `TripletStream.steps_per_epoch`.

**Network.** A background thread per worker streams the WebDataset tar through
`scale_alibi.model.data.client.ShardClient` (one keep-alive pool per worker process; retries resume
with ``start=``, so a server restart mid-epoch loses and repeats nothing) and parses it into samples
held in a queue of ``prefetch`` samples (bounded), so network I/O overlaps decoding. A server that
cannot be reached when the dataset is created raises `scale_alibi.contract.errors.UserError` at
once, naming the URL.

**Tensors.** uint8 (C, H, W): s1 (2: VV, VH), s2 (3), naip (3, 256 px), naip_hires (3, 512 px
assembled from the four z+1 tiles); ``modalities=`` decodes only those a consumer reads (the trainer
skips the 256 px naip). They stay uint8 through the DataLoader's worker->main queue and the
host->GPU copy (4x fewer bytes than float32); `Normalize` (``curate stats`` ->
``<release>/stats.json``) turns them into float32 ``(x - mean) / std`` per channel on the device.
``tile_size_m`` (B,) float32 is `scale_alibi.contract.tiles.tile_ground_size_m(z, y)`. A batch's
tensors are views of one buffer (`collate_triplets`), allocated in shared memory inside the worker.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import MODALITIES, TRIPLET_MEMBERS, shard_count
from scale_alibi.contract.tiles import tile_ground_size_m
from scale_alibi.model.data.client import ShardClient
from scale_alibi.model.data.decode import decode_triplet
from scale_alibi.model.data.delivery import Delivery, shared_buffer
from scale_alibi.model.data.order import ShardPlan, rank_shards, shard_length

STATE_VERSION = 1


# ------------------------------------------------------------------------------------- dataset

_END = object()


class TripletStream(IterableDataset):
    """An IterableDataset of decoded triplets streamed from `curate serve` (see the module docstring)."""

    def __init__(
        self,
        url: str,
        release: str,
        *,
        split: str = "train",
        shard_size: int = 64,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 256,
        prefetch: int = 64,
        decode: bool = True,
        modalities: Sequence[str] = MODALITIES,
        retries: int = 10,
        timeout_s: float = 30.0,
        on_retry: Callable[[str], None] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in 0..{world_size - 1}")
        if shard_size < 1 or prefetch < 1:
            raise UserError("shard_size and prefetch must be at least 1")
        self.client = ShardClient(url, timeout_s=timeout_s, retries=retries, on_retry=on_retry)
        self.release, self.split, self.shard_size = release, split, int(shard_size)
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle_buffer, self.prefetch = int(shuffle_buffer), int(prefetch)
        self.decode = decode
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise UserError(f"unknown modalities {sorted(unknown)}; choose from {list(MODALITIES)}")
        self.modalities = tuple(modalities)  # decoded per sample; the rest of the PNGs are skipped
        info = self.client.release_info(release, self.shard_size, split)  # fails fast when unreachable
        self.n = int(info["triplets"])
        if int(info["num_shards"]) != shard_count(self.n, self.shard_size):
            raise UserError(f"server reports {info['num_shards']} shards for {self.n} triplets of {self.shard_size}; client and server disagree on the shard contract")
        self._resume: dict[str, Any] | None = None

    # ---- epoch and resume
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for the next iteration; clears any resume state."""
        self.epoch = int(epoch)
        self._resume = None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume mid-epoch from `StreamProgress.state_dict()` (same seed, world size and worker count)."""
        if state.get("version") != STATE_VERSION:
            raise UserError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        if (state.get("seed") is not None and int(state["seed"]) != self.seed) or int(state.get("world_size", self.world_size)) != self.world_size:
            raise UserError("loader state was saved with a different seed or world size; resume with the same ones")
        self.epoch = int(state["epoch"])
        self._resume = {"consumed": [int(c) for c in state["consumed"]], "next_worker": int(state["next_worker"]), "num_workers": int(state["num_workers"])}

    def resumed_samples(self) -> int:
        """Samples of this epoch that a loaded resume state skips (0 without one)."""
        return sum(self._resume["consumed"]) if self._resume is not None else 0

    def plan(self, num_workers: int) -> ShardPlan:
        """The epoch's order for `num_workers` DataLoader workers per rank."""
        return ShardPlan(self.n, self.shard_size, self.seed, self.epoch, self.world_size, max(1, num_workers), self.shuffle_buffer)

    def steps_per_epoch(self, batch_size: int, num_workers: int) -> int:
        """Batches every rank gets this epoch (the minimum over ranks): stop there to keep DDP in step without join."""
        plan = self.plan(num_workers)
        return min(sum(-(-c // batch_size) for c in plan.worker_samples(r)) for r in range(self.world_size))

    def __len__(self) -> int:
        """Samples this rank yields per epoch (shards are whole, so any worker count gives the same)."""
        return sum(shard_length(self.n, self.shard_size, s) for s in rank_shards(shard_count(self.n, self.shard_size), self.rank, self.world_size))

    # ---- iteration (runs inside each DataLoader worker)
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        num_workers, physical = (info.num_workers, info.id) if info else (1, 0)
        consumed, rotate = 0, 0
        if self._resume is not None:
            if self._resume["num_workers"] != num_workers:
                raise UserError(f"loader state was saved with {self._resume['num_workers']} workers per rank; resume with the same number, not {num_workers}")
            rotate = self._resume["next_worker"]
        worker = (physical + rotate) % num_workers
        if self._resume is not None:
            consumed = self._resume["consumed"][worker]
        plan = self.plan(num_workers)
        order = plan.worker_order(self.rank, worker)
        done = set(itertools.islice(order, consumed))  # yielded before the state was saved: skipped
        yield from self._yield_in_order(order, plan.worker_shards(self.rank, worker), done, worker)

    def _shard_params(self) -> dict[str, Any]:
        return {"shard_size": self.shard_size, "seed": self.seed, "epoch": self.epoch, "split": self.split}

    def _fetch(self, shards: list[int], done: set[tuple[int, int]], out: queue.Queue, stop: threading.Event) -> None:
        """Background thread: stream each of `shards` in order, from its first sample not in `done`,
        into the bounded queue (samples in `done` are skipped)."""

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            for s in shards:
                expected = shard_length(self.n, self.shard_size, s)
                start = next((o for o in range(expected) if (s, o) not in done), None)
                if start is None:
                    continue  # wholly consumed before a resume
                for offset, key, members in self.client.stream_shard(self.release, s, self._shard_params(), expected, start=start):
                    if (s, offset) in done:
                        continue  # consumed before a resume; only re-read because it sits between needed ones
                    if not put(((s, offset), key, members)):
                        return
            put(_END)
        except BaseException as exc:  # hand every failure to the consuming thread
            put(exc)

    def _yield_in_order(self, order: Iterator[tuple[int, int]], shards: list[int], done: set[tuple[int, int]],
                        worker: int) -> Iterator[dict[str, Any]]:
        """The samples of `order` (the rest of the worker's epoch), fetched from `shards` minus `done`."""
        first = next(order, None)
        if first is None:
            return
        order = itertools.chain([first], order)
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._fetch, args=(shards, done, q, stop), daemon=True,
                                  name=f"shard-fetch-{worker}")
        thread.start()
        held: dict[tuple[int, int], tuple[str, dict[str, bytes]]] = {}
        try:
            for pos in order:
                while pos not in held:
                    item = q.get()
                    if item is _END:
                        raise RuntimeError(f"stream ended before sample {pos} arrived")  # cannot happen: order is complete
                    if isinstance(item, BaseException):
                        raise item
                    p, key, members = item
                    held[p] = (key, members)
                key, members = held.pop(pos)
                yield self._sample(pos, key, members, worker)
        finally:
            stop.set()
            while True:  # unblock the thread if it is waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    break

    def _sample(self, pos: tuple[int, int], key: str, members: dict[str, bytes], worker: int) -> dict[str, Any]:
        meta = json.loads(members["json"]) if "json" in members else {}
        z, x, y = (int(meta[k]) for k in ("z", "x", "y")) if meta else (int(v) for v in key.split("_"))
        sample: dict[str, Any] = {"z": z, "x": x, "y": y, "tile_size_m": tile_ground_size_m(z, y), "shard": pos[0], "offset": pos[1], "worker": worker, "epoch": self.epoch}
        if self.decode:
            sample.update(decode_triplet(members, self.modalities))
        else:
            sample["png"] = {m: members[m] for m in TRIPLET_MEMBERS}
        return sample


# ------------------------------------------------------------------------------------- batching

TAGS = ("z", "x", "y", "shard", "offset")  # int64 per sample


def aligned_spans(sizes: list[int], align: int = 8) -> list[tuple[int, int]]:
    """(start, end) byte offsets of consecutive parts of `sizes` bytes, each starting at a multiple
    of `align` (a view of another dtype must start at a multiple of its element size)."""
    spans, at = [], 0
    for size in sizes:
        at = -(-at // align) * align
        spans.append((at, at + size))
        at += size
    return spans


def collate_triplets(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: images (B, C, H, W), z/x/y/shard/offset (B,) int64, tile_size_m (B,) float32; worker, epoch ints.

    Every tensor of the batch is a view of one buffer, in shared memory inside a DataLoader worker:
    one allocation per batch and one file descriptor for the main process to receive, where a
    buffer per tensor cost ten (a third of the main process's CPU per batch).
    """
    workers = {s["worker"] for s in samples}
    if len(workers) != 1:
        raise ValueError("a batch mixes samples of several workers; let the DataLoader batch (batch_size=...)")
    n = len(samples)
    images = [(m, samples[0][m]) for m in MODALITIES if m in samples[0]]
    spans = aligned_spans([n * t.nbytes for _, t in images] + [8 * n * len(TAGS), 4 * n])
    buf = shared_buffer(spans[-1][1])
    batch: dict[str, Any] = {}
    for (m, first), (start, end) in zip(images, spans):
        batch[m] = torch.stack([s[m] for s in samples], out=buf[start:end].view(first.dtype).view(n, *first.shape))
    tags = buf[slice(*spans[-2])].view(torch.int64).view(len(TAGS), n)
    tags.copy_(torch.tensor([[s[k] for s in samples] for k in TAGS], dtype=torch.int64))
    batch.update(zip(TAGS, tags))
    batch["tile_size_m"] = buf[slice(*spans[-1])].view(torch.float32)
    batch["tile_size_m"].copy_(torch.tensor([s["tile_size_m"] for s in samples], dtype=torch.float32))
    batch["worker"] = workers.pop()
    batch["epoch"] = samples[0]["epoch"]
    if "png" in samples[0]:
        batch["png"] = [s["png"] for s in samples]
    return batch


class TripletLoader(DataLoader):
    """A DataLoader over a `TripletStream` whose iterator raises
    `scale_alibi.model.data.delivery.BatchNotDelivered` (one line) when a worker cannot deliver a
    batch, and when an epoch ends short of the samples it owes (``len(ds)`` less a resume's skips)."""

    def __iter__(self) -> Delivery:  # type: ignore[override]
        ds = self.dataset
        expected = None
        if isinstance(ds, TripletStream):
            expected = len(ds) - ds.resumed_samples()
        return Delivery(super().__iter__, expected)


def make_loader(ds: TripletStream, batch_size: int, num_workers: int = 2, pin_memory: bool | None = None, prefetch_factor: int = 2) -> TripletLoader:
    """A `TripletLoader` over `ds` with `collate_triplets`; pinned memory by default when CUDA is available."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    return TripletLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_triplets, pin_memory=pin_memory, **kwargs)


class StreamProgress:
    """Trainer-side count of consumed samples per logical worker: the loader's resumable state."""

    def __init__(self, num_workers: int, epoch: int = 0, seed: int | None = None, world_size: int = 1):
        self.num_workers = max(1, int(num_workers))
        self.seed, self.world_size = seed, world_size
        self.reset(epoch)

    def reset(self, epoch: int) -> None:
        """Start counting a new epoch."""
        self.epoch = int(epoch)
        self.consumed = [0] * self.num_workers
        self.next_worker = 0

    def update(self, batch: Mapping[str, Any]) -> None:
        """Record that the trainer consumed `batch` (call once per batch, after using it)."""
        epoch = int(batch.get("epoch", self.epoch))
        if epoch != self.epoch:  # the first batch of the next epoch
            self.reset(epoch)
        w = int(batch["worker"])
        self.consumed[w] += int(batch["z"].shape[0])
        self.next_worker = (w + 1) % self.num_workers

    @property
    def samples(self) -> int:
        return sum(self.consumed)

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-serialisable dict for the checkpoint."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "seed": self.seed, "world_size": self.world_size,
                "num_workers": self.num_workers, "consumed": list(self.consumed), "next_worker": self.next_worker}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue counting from a saved state."""
        self.num_workers = int(state["num_workers"])
        self.epoch, self.seed, self.world_size = int(state["epoch"]), state.get("seed"), int(state.get("world_size", 1))
        self.consumed = [int(c) for c in state["consumed"]]
        self.next_worker = int(state["next_worker"])

    @classmethod
    def for_loader(cls, loader: DataLoader) -> StreamProgress:
        """A progress counter matching `loader` (its dataset must be a TripletStream)."""
        ds = loader.dataset
        if not isinstance(ds, TripletStream):
            raise TypeError(f"StreamProgress counts a TripletStream's samples; this loader reads a {type(ds).__name__}")
        return cls(loader.num_workers, epoch=ds.epoch, seed=ds.seed, world_size=ds.world_size)
