"""Per-modality channel mean/std of a release, stored beside its manifest (`curate stats` writes ``OUT/<release>/stats.json``::

    {"release": "small", "split": "train", "triplets": 1234, "scale": "uint8",
     "manifest_sha256": "...", "modalities": {"s1": {"mean": [vv, vh], "std": [vv, vh]},
     "s2": {...3...}, "naip": {...3...}, "naip_hires": {...3...}}}

Values are on the 0..255 scale of the decoded uint8 tensors (the channels `scale_alibi.model.data.loader` yields:
s1 is VV, VH). Only the train split by default, so held-out tiles do not leak into training.
The loader reads it with `scale_alibi.model.data.transforms.load_stats`.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.names import MODALITIES, triplet_tiles
from scale_alibi.contract.png import TILE_PX, tile_problem
from scale_alibi.contract.reader import StoredRelease
from scale_alibi.contract.release import STATS_NAME
from scale_alibi.model.data.decode import decode_triplet


def _reason(e: Exception) -> str:
    """An exception as a short single-line reason."""
    return f"{e.__class__.__name__}: {' '.join(str(e).split())[:100]}"


def _decode_checked(members: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """`decode_triplet` of tiles whose headers were checked first: a tile that announces
    30000 x 30000 px would take gigabytes to decode (ValueError naming the member instead)."""
    for name, data in members.items():
        problem = tile_problem(data)
        if problem is not None:
            raise ValueError(f"{name} {problem} (tiles are {TILE_PX} px 8-bit PNGs)")
    return decode_triplet(members)


def _sums(release: StoredRelease, tiles: list[tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """Per modality: [pixel count, per-channel sum, per-channel sum of squares] over `tiles`."""
    acc: dict[str, np.ndarray] = {}
    read = release.tiles()  # the tile tree, or the release's PMTiles archives when it has none
    for z, x, y in tiles:
        try:
            members = {name: read(*tile) for name, tile in triplet_tiles(z, x, y)}
            decoded = _decode_checked(members)
        except Exception as e:  # missing, truncated or corrupt PNG: name the triplet, not the codec's frame
            raise UserError(f"release {release.name!r}: triplet {z}/{x}/{y} cannot be read ({_reason(e)}); "
                            "rebuild the release with `curate build`") from None
        for m, t in decoded.items():
            a = t.numpy().reshape(t.shape[0], -1).astype(np.float64)
            row = np.concatenate([[a.shape[1]], a.sum(1), np.square(a).sum(1)])
            acc[m] = acc[m] + row if m in acc else row
    return acc


def compute_stats(release: StoredRelease, split: str = "train", limit: int | None = None,
                  workers: int = 1) -> dict[str, object]:
    """Channel mean/std per modality over a split's triplets (all of them, or `limit` evenly spaced)."""
    manifest = release.manifest()  # checked: a manifest that lies is refused before any tile is read
    table = manifest.table.select(["z", "x", "y", "split"])
    rows = [r for r in table.to_pylist() if split == "all" or r["split"] == split]
    if not rows:
        raise UserError(f"release {release.name!r} has no {split!r} triplets; pick --split train, heldout or all")
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    tiles = [(r["z"], r["x"], r["y"]) for r in rows]
    chunks = [tiles[i::workers] for i in range(workers)] if workers > 1 else [tiles]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_sums, [release] * len(chunks), chunks))
    else:
        parts = [_sums(release, tiles)]
    modalities = {}
    for m in MODALITIES:
        total = np.sum([p[m] for p in parts if m in p], axis=0)  # integer-valued float64: exact in any order
        c = (len(total) - 1) // 2
        n, s, sq = total[0], total[1 : 1 + c], total[1 + c :]
        mean = s / n
        std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
        modalities[m] = {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}
    return {
        "release": release.name,
        "split": split,
        "triplets": len(tiles),
        "scale": "uint8",
        "manifest_sha256": manifest.sha256,
        "modalities": modalities,
    }


def write_stats(release: StoredRelease, stats: dict[str, object]) -> str:
    """Store `stats` as <release>/stats.json (atomically: one PUT in a bucket); returns where."""
    release.check_writable()
    release.write(STATS_NAME, (json.dumps(stats, indent=2) + "\n").encode())
    return release.key(STATS_NAME)
