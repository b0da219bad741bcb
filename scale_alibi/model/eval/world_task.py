"""A land-cover task with known answers: a release built from the synthetic world, each tile
labelled with the world's truth.

The truth (scale_alibi/devworld/field.py) knows its land-cover classes everywhere: a tile's label is the
class that covers most of it, counted on a 32 x 32 grid of ground points over the tile. Images
are the release's own tiles: S2 (256 px) for the low-res encoders, the four NAIP tiles one zoom
deeper (512 px) for the high-res one. Splits follow the manifest: held-out tiles are the test
set; every fifth train tile (manifest order) is the validation set, the rest train.
"""

from __future__ import annotations

from pathlib import Path

import mercantile
import numpy as np
from PIL import Image
from tqdm import tqdm

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import HIRES_NAMES, Release
from scale_alibi.devworld.config import WorldConfig
from scale_alibi.devworld.field import CLASSES, Truth
from scale_alibi.model.eval.task import Split, TaskData
from scale_alibi.model.nn.geometry import tile_ground_size_m

NAME = "world-landcover"
LABEL_GRID = 32  # ground points per tile side for the dominant class
VALID_EVERY = 5


def class_fractions(truth: Truth, z: int, x: int, y: int) -> np.ndarray:
    """Fraction of XYZ tile (z, x, y) each land-cover class covers, (len(CLASSES),)."""
    b = mercantile.bounds(x, y, z)
    t = (np.arange(LABEL_GRID) + 0.5) / LABEL_GRID
    lon = b.west + t * (b.east - b.west)
    # rows evenly spaced in web-mercator y, as the tile's pixels are
    top, bottom = mercantile.xy(b.west, b.north)[1], mercantile.xy(b.west, b.south)[1]
    lat = np.array([mercantile.lnglat(0.0, top + v * (bottom - top)).lat for v in t])
    lon_g, lat_g = np.meshgrid(lon, lat)
    counts = np.bincount(truth.classes(*truth.to_local(lon_g, lat_g)).ravel(), minlength=len(CLASSES))
    return counts / counts.sum()


def tile_label(truth: Truth, z: int, x: int, y: int) -> int:
    """The class covering most of XYZ tile (z, x, y)."""
    return int(class_fractions(truth, z, x, y).argmax())


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def _hires(release: Release, z: int, x: int, y: int) -> np.ndarray:
    """The 512 px NAIP image of tile (z, x, y) from its four zoom z+1 children."""
    paths = release.triplet_paths(z, x, y)
    top = np.concatenate([_rgb(paths[HIRES_NAMES[0]]), _rgb(paths[HIRES_NAMES[1]])], axis=2)
    bottom = np.concatenate([_rgb(paths[HIRES_NAMES[2]]), _rgb(paths[HIRES_NAMES[3]])], axis=2)
    return np.concatenate([top, bottom], axis=1)


def load_world_task(release: Release, world: WorldConfig, progress: bool = True) -> TaskData:
    """The land-cover task of a release built from the synthetic world `world`."""
    if not release.is_finished:
        raise UserError(f"{release.path} is not a finished release (no manifest); "
                        "pass DATA/RELEASE of a `curate build` of the synthetic world")
    table = release.read_manifest().select(["z", "x", "y", "split"]).to_pydict()
    rows = list(zip(table["z"], table["x"], table["y"], table["split"]))
    train = [r for r in rows if r[3] == "train"]
    parts = {"train": [r for i, r in enumerate(train) if i % VALID_EVERY],
             "valid": train[::VALID_EVERY],
             "test": [r for r in rows if r[3] == "heldout"]}
    truth = Truth(world)
    splits = {}
    for split, tiles in parts.items():
        s2, hires, labels, ground = [], [], [], []
        for z, x, y, _ in tqdm(tiles, desc=f"{NAME} {split}", disable=not progress, leave=False):
            s2.append(_rgb(release.tile_path("s2", z, x, y)))
            hires.append(_hires(release, z, x, y))
            labels.append(tile_label(truth, z, x, y))
            ground.append(tile_ground_size_m(z, y))
        splits[split] = Split({"s2": np.stack(s2), "naip_hires": np.stack(hires)},
                              np.asarray(ground, np.float32), np.asarray(labels, np.int64))
    return TaskData(NAME, CLASSES, splits,
                    "the release's own S2 (256 px) and NAIP (512 px) RGB tiles, as trained on")
