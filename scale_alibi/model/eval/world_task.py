"""A land-cover task with known answers: a release built from the synthetic world, each tile
labelled with the world's truth.

The labels come from the caller (`curate eval` passes scale_alibi.devworld.landcover.tile_label: the
class that covers most of a tile in the world's truth), so this module needs no world. Images
are the release's own tiles: S2 (256 px) for the low-res encoders, the four NAIP tiles one zoom
deeper (512 px) for the high-res one. Splits follow the manifest: held-out tiles are the test
set; every fifth train tile (manifest order) is the validation set, the rest train.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.names import HIRES_NAMES, triplet_tiles
from scale_alibi.contract.reader import StoredRelease, TileRead
from scale_alibi.contract.tiles import tile_ground_size_m
from scale_alibi.model.eval.task import Split, TaskData

NAME = "world-landcover"
VALID_EVERY = 5


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).transpose(2, 0, 1)


def _hires(read: TileRead, z: int, x: int, y: int) -> np.ndarray:
    """The 512 px NAIP image of tile (z, x, y) from its four zoom z+1 children."""
    tiles = dict(triplet_tiles(z, x, y))
    top = np.concatenate([_rgb(read(*tiles[HIRES_NAMES[0]])), _rgb(read(*tiles[HIRES_NAMES[1]]))], axis=2)
    bottom = np.concatenate([_rgb(read(*tiles[HIRES_NAMES[2]])), _rgb(read(*tiles[HIRES_NAMES[3]]))], axis=2)
    return np.concatenate([top, bottom], axis=1)


def load_world_task(release: StoredRelease, classes: tuple[str, ...], label: Callable[[int, int, int], int],
                    progress: bool = True) -> TaskData:
    """The land-cover task of a release built from the synthetic world: `label(z, x, y)` is a tile's
    class, an index into `classes`."""
    if not release.is_finished():
        raise UserError(f"{release.location} is not a finished release (no manifest); "
                        "pass DATA/RELEASE of a `curate build` of the synthetic world")
    table = release.manifest().table.select(["z", "x", "y", "split"]).to_pydict()
    read = release.tiles()
    rows = list(zip(table["z"], table["x"], table["y"], table["split"]))
    train = [r for r in rows if r[3] == "train"]
    parts = {"train": [r for i, r in enumerate(train) if i % VALID_EVERY],
             "valid": train[::VALID_EVERY],
             "test": [r for r in rows if r[3] == "heldout"]}
    splits = {}
    for split, tiles in parts.items():
        s2, hires, labels, ground = [], [], [], []
        for z, x, y, _ in tqdm(tiles, desc=f"{NAME} {split}", disable=not progress, leave=False):
            s2.append(_rgb(read("s2", z, x, y)))
            hires.append(_hires(read, z, x, y))
            labels.append(label(z, x, y))
            ground.append(tile_ground_size_m(z, y))
        splits[split] = Split({"s2": np.stack(s2), "naip_hires": np.stack(hires)},
                              np.asarray(ground, np.float32), np.asarray(labels, np.int64))
    return TaskData(NAME, classes, splits,
                    "the release's own S2 (256 px) and NAIP (512 px) RGB tiles, as trained on")
