"""A map-style Dataset over a release on any store (a directory, ``s3://...``), read through the
contract's reader: no server needed (a laptop, a notebook, a cluster with the release on shared disk).

    ds = ReleaseDataset("s3://bucket/releases", "small", split="train", shard_size=64, seed=0)
    ds.set_epoch(3)
    sample = ds[i]       # dict: z x y tile_size_m shard offset worker epoch + s1 s2 naip naip_hires

Item ``i`` of an epoch is the sample the HTTP stream (`scale_alibi.model.data.loader.TripletStream`)
yields at position (shard, offset) = divmod(i, shard_size) with the same split, shard size, seed and
epoch: the split's manifest rows in (z, x, y) order, permuted by `contract.release.epoch_permutation`
(the server's rule, `shard_rows`), decoded by the same `decode_triplet`. So index order is the
epoch's order; a sampler (or `torch.utils.data.DistributedSampler`) picks which items a process
reads. Each tile's bytes are checked against the manifest's sha256, as the server does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.compute as pc
from torch.utils.data import Dataset, get_worker_info

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.names import MODALITIES, TRIPLET_MEMBERS
from scale_alibi.contract.reader import StoredRelease, TileRead
from scale_alibi.contract.release import content_hash, epoch_permutation, triplet_files, triplet_tiles
from scale_alibi.contract.tiles import tile_ground_size_m
from scale_alibi.model.data.decode import decode_triplet

HASHES = ("hash_s1", "hash_s2", "hash_naip", "hash_naip_hires")


class ReleaseDataset(Dataset):
    """The triplets of one split of a release, in an epoch's order (see the module docstring)."""

    def __init__(self, data: str | os.PathLike[str], release: str, *, split: str = "train", shard_size: int = 64,
                 seed: int = 0, epoch: int = 0, decode: bool = True, modalities: Sequence[str] = MODALITIES):
        if split not in ("train", "heldout", "all"):
            raise UserError(f"split {split!r} is not train, heldout or all")
        if shard_size < 1:
            raise UserError("shard_size must be at least 1")
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise UserError(f"unknown modalities {sorted(unknown)}; choose from {list(MODALITIES)}")
        self.release = StoredRelease(data, release)
        table = self.release.manifest().table  # checked: unique, in-range rows whose hashes are sha256s
        if split != "all":
            table = table.filter(pc.equal(table.column("split"), split))
        # The server's split rows: manifest order, which is (z, x, y) order (write_manifest sorts).
        table = table.sort_by([("z", "ascending"), ("x", "ascending"), ("y", "ascending")])
        self.rows = table.select(["z", "x", "y", *HASHES]).to_pylist()
        self.split, self.shard_size, self.seed, self.epoch = split, int(shard_size), int(seed), int(epoch)
        self.decode, self.modalities = decode, tuple(modalities)
        self._read: tuple[int, TileRead] | None = None  # (pid, reader): opened once per process

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order indices follow (call before making a DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def row_of(self, index: int) -> int:
        """The split row at position `index` of the epoch (the server's `shard_rows` order)."""
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} {self.split} triplets")
        return int(epoch_permutation(len(self.rows), self.seed, self.epoch)[index])

    def _reader(self) -> TileRead:
        if self._read is None or self._read[0] != os.getpid():  # a DataLoader worker opens its own
            self._read = (os.getpid(), self.release.tiles())
        return self._read[1]

    def members(self, row: int) -> dict[str, bytes]:
        """The PNG bytes of every member of split row `row`, each checked against the manifest's sha256."""
        r = self.rows[row]
        read = self._reader()
        out: dict[str, bytes] = {}
        for (name, tile), (_, digest) in zip(triplet_tiles(r["z"], r["x"], r["y"]), triplet_files(r)):
            data = read(*tile)
            if content_hash(data) != digest:
                raise UserError(f"{self.release.location}: {tile[0]} tile {tile[1]}/{tile[2]}/{tile[3]} does not match "
                                f"the manifest's sha256; run `curate verify --data {self.release.root} --release "
                                f"{self.release.name} --repair`")
            out[name] = data
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.row_of(int(index))
        z, x, y = (int(self.rows[row][k]) for k in ("z", "x", "y"))
        shard, offset = divmod(int(index), self.shard_size)
        info = get_worker_info()
        sample: dict[str, Any] = {"z": z, "x": x, "y": y, "tile_size_m": tile_ground_size_m(z, y), "shard": shard,
                                  "offset": offset, "worker": info.id if info else 0, "epoch": self.epoch}
        members = self.members(row)
        if self.decode:
            sample.update(decode_triplet(members, self.modalities))
        else:
            sample["png"] = {m: members[m] for m in TRIPLET_MEMBERS}
        return sample

    def zooms(self) -> list[int]:
        """The zooms of the split's triplets."""
        return sorted({int(v) for v in np.unique([r["z"] for r in self.rows])})
