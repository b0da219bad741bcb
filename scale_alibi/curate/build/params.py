"""What decides a release's content (BuildParams), the checks on its options, and the tiles it plans."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from scale_alibi.contract.errors import UserError

MAX_BUILD_ZOOM = 21  # NAIP is also cut at zoom + 1, and web-mercator planning stops at 22


@dataclass(frozen=True)
class BuildParams:
    """Everything that decides a release's content (recorded in the manifest; a rerun must match)."""

    release: str
    zoom: int
    region: str
    datetime: str | None = None
    max_cloud: float = 20.0
    naip_years: tuple[int, int] | None = None
    max_gap_days: float = 730.0
    min_valid: float = 0.99
    metatile_levels: int = 3
    heldout_fraction: float = 0.25
    split_levels: int = 2
    s1_mode: str = "IW"


def split_of(z: int, x: int, y: int, fraction: float, levels: int) -> str:
    """Deterministic spatially blocked split: the tile's ancestor `levels` up, hashed, is held out with
    probability `fraction` (all tiles of one block share a split, so neighbours never leak)."""
    k = max(0, z - levels)
    bx, by = x >> (z - k), y >> (z - k)
    h = int.from_bytes(hashlib.sha256(f"scale-alibi-split/{k}/{bx}/{by}".encode()).digest()[:8], "big")
    return "heldout" if h / 2**64 < fraction else "train"


def plan_tiles(params: BuildParams, geometry=None, spec=None) -> dict[tuple[int, int], str]:
    """{(x, y): split} of every tile of the build at `params.zoom` (a region or a named release)."""
    from scale_alibi.curate.plan import iter_release_tiles, iter_tiles

    tiles: dict[tuple[int, int], str] = {}
    if spec is not None:
        for sub, t in iter_release_tiles(spec):
            tiles.setdefault((t.x, t.y), sub.split)
    else:
        for t in iter_tiles(geometry, params.zoom):
            tiles[(t.x, t.y)] = split_of(params.zoom, t.x, t.y, params.heldout_fraction, params.split_levels)
    return tiles


def _check_options(max_cloud: float, naip_years, max_gap_days: float, min_valid: float, heldout_fraction: float,
                   metatile_levels: int, split_levels: int, workers: int | None, timeout_s: float) -> None:
    """Refuse option values that could only give an empty release, a traceback or a hang (NaN fails every test)."""
    if not 0 <= max_cloud <= 100:
        raise UserError(f"--max-cloud {max_cloud} must be a percentage in [0, 100]")
    if not max_gap_days >= 0:
        raise UserError(f"--max-gap-days {max_gap_days} must be a number of days >= 0")
    if not 0 < min_valid <= 1:
        raise UserError(f"--min-valid {min_valid} must be in (0, 1]")
    if not 0 <= heldout_fraction <= 1:
        raise UserError(f"--heldout-fraction {heldout_fraction} must be in [0, 1]")
    if naip_years and naip_years[0] > naip_years[1]:
        raise UserError(f"--naip-years {naip_years[0]}-{naip_years[1]} ends before it starts; give FIRST-LAST")
    for name, value in (("--metatile", metatile_levels), ("--split-levels", split_levels)):
        if not (isinstance(value, int) and value >= 0):
            raise UserError(f"{name} {value} must be a whole number of levels >= 0")
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise UserError(f"--workers {workers} must be at least 1")
    if not 0 < timeout_s < float("inf"):
        raise UserError(f"--timeout {timeout_s} must be a positive number of seconds")
