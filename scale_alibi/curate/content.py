"""What a release's tiles show, checked from their pixels: tiles that are mostly one value (black
borders, fill, a saturated block) and per-layer histograms drawn to a PNG.

The hashes in the manifest prove that files are the ones the build wrote; this checks that what it
wrote is imagery. `curate verify --content` lists the tiles whose most common pixel value covers
more than `max_constant` of the tile; `curate stats --histogram FILE` draws the value histogram of
every channel of every layer (docs/curation.md, "Checking content").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scale_alibi.contract.release import triplet_files
from scale_alibi.curate.encode import decode_png, encode_png

MAX_CONSTANT = 0.5  # a tile more than half one value is not imagery of the ground
# Histogram panels: one strip per (layer, channel), in this order; S1's R channel is always 0.
HISTOGRAM_STRIPS: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("s1", 1, (0, 160, 0)), ("s1", 2, (0, 0, 200)),
    ("s2", 0, (200, 0, 0)), ("s2", 1, (0, 160, 0)), ("s2", 2, (0, 0, 200)),
    ("naip", 0, (200, 0, 0)), ("naip", 1, (0, 160, 0)), ("naip", 2, (0, 0, 200)),
    ("naip_hires", 0, (200, 0, 0)), ("naip_hires", 1, (0, 160, 0)), ("naip_hires", 2, (0, 0, 200)),
)
STRIP_H = 64  # pixels per strip; a bin is 2 px wide, so a strip is 512 px
GAP_H = 6

Reader = Callable[[str], "bytes | None"]  # release-relative path -> its bytes, or None when absent


@dataclass(frozen=True)
class ConstantTile:
    """A tile whose most common pixel value covers `fraction` of it."""

    path: str  # release-relative, e.g. "s1/16/14196/25911.png"
    fraction: float
    value: tuple[int, ...]  # that pixel value (R, G, B)


def most_common(img: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """The share of an (H, W, C) uint8 image's pixels taken by its most common value, and that value."""
    flat = img.reshape(-1, img.shape[-1]).astype(np.uint32)
    keys: np.ndarray = np.zeros(flat.shape[0], np.uint32)
    for c in range(flat.shape[1]):
        keys = (keys << 8) | flat[:, c]
    values, counts = np.unique(keys, return_counts=True)
    top = int(np.argmax(counts))
    key = int(values[top])
    value = tuple((key >> (8 * (flat.shape[1] - 1 - c))) & 255 for c in range(flat.shape[1]))
    return float(counts[top]) / flat.shape[0], value


def _files(rows: Iterable[dict]) -> list[tuple[str, str]]:
    """(path, member) of every file of the rows; NAIP at zoom + 1 is the member "naip_hires"."""
    out = []
    for row in rows:
        z = int(row["z"])
        for rel, _digest in triplet_files(row):
            layer, tz = rel.split("/")[:2]
            out.append((rel, "naip_hires" if layer == "naip" and int(tz) == z + 1 else layer))
    return out


def _decoded(files: list[tuple[str, str]], read: Reader) -> Iterable[tuple[str, str, np.ndarray]]:
    """(path, member, pixels) of each file that exists, decoded a few at a time (decoding releases the GIL)."""
    def load(f: tuple[str, str]):
        data = read(f[0])
        return None if data is None else decode_png(data)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for (rel, name), img in zip(files, pool.map(load, files)):
            if img is not None:  # a missing file is damage, reported by the hash check
                yield rel, name, img


def constant_tiles(rows: Iterable[dict], read: Reader, max_constant: float = MAX_CONSTANT) -> list[ConstantTile]:
    """The tiles of the manifest `rows` whose most common value covers more than `max_constant`, in row order."""
    out = []
    for rel, _name, img in _decoded(_files(rows), read):
        share, value = most_common(img[..., :3])
        if share > max_constant:
            out.append(ConstantTile(rel, share, value))
    return out


def histograms(rows: Iterable[dict], read: Reader) -> dict[str, np.ndarray]:
    """Per member (s1, s2, naip, naip_hires): (3, 256) counts of each channel's values."""
    hist = {name: np.zeros((3, 256), np.int64) for name in ("s1", "s2", "naip", "naip_hires")}
    for _rel, name, img in _decoded(_files(rows), read):
        for c in range(3):
            hist[name][c] += np.bincount(img[..., c].ravel(), minlength=256)
    return hist


def draw_histograms(hist: dict[str, np.ndarray], path: Path) -> None:
    """Draw `hist` as a PNG: one strip per HISTOGRAM_STRIPS entry, top to bottom, value 0-255 left
    to right (2 px per value), bar height log(1 + count) scaled to the strip's largest count."""
    width = 512
    height = len(HISTOGRAM_STRIPS) * (STRIP_H + GAP_H)
    img = np.full((height, width, 3), 255, np.uint8)
    for i, (name, channel, colour) in enumerate(HISTOGRAM_STRIPS):
        top = i * (STRIP_H + GAP_H)
        img[top + STRIP_H, :] = 200  # baseline
        counts = np.log1p(hist[name][channel].astype(np.float64))
        if counts.max() <= 0:
            continue
        bars = np.rint(counts / counts.max() * STRIP_H).astype(int)
        for value, h in enumerate(bars):
            if h:
                img[top + STRIP_H - h: top + STRIP_H, 2 * value: 2 * value + 2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(img))
