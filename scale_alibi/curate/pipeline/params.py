"""What decides a release's content (BuildParams, with the build's defaults written once) and the checks
on its values."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.search import SearchOptions
from scale_alibi.curate.selection import MAX_GAP_DAYS

MAX_BUILD_ZOOM = 21  # NAIP is also cut at zoom + 1, and web-mercator planning stops at 22


@dataclass(frozen=True)
class BuildParams:
    """Everything that decides a release's content (recorded in the manifest; a rerun must match).
    Its defaults are the build's defaults: the CLI shows these and the API applies them."""

    release: str
    zoom: int
    region: str
    datetime: str | None = None
    max_cloud: float = SearchOptions.max_cloud
    naip_years: tuple[int, int] | None = None
    max_gap_days: float = MAX_GAP_DAYS
    min_valid: float = 0.99
    metatile_levels: int = 3
    heldout_fraction: float = 0.25
    split_levels: int = 2
    s1_mode: str = SearchOptions.s1_mode


def split_of(z: int, x: int, y: int, fraction: float, levels: int) -> str:
    """Deterministic spatially blocked split: the tile's ancestor `levels` up, hashed, is held out with
    probability `fraction` (all tiles of one block share a split, so neighbours never leak)."""
    k = max(0, z - levels)
    bx, by = x >> (z - k), y >> (z - k)
    h = int.from_bytes(hashlib.sha256(f"scale-alibi-split/{k}/{bx}/{by}".encode()).digest()[:8], "big")
    return "heldout" if h / 2**64 < fraction else "train"


def check_build_zoom(zoom: int) -> int:
    """`zoom` if a build can cut it (0-MAX_BUILD_ZOOM), else UserError."""
    from scale_alibi.curate.plan import check_zoom

    check_zoom(zoom)
    if zoom > MAX_BUILD_ZOOM:
        raise UserError(f"zoom {zoom} is too deep: NAIP is also cut at zoom + 1, so use 0-{MAX_BUILD_ZOOM}")
    return zoom


def check_params(params: BuildParams) -> None:
    """Refuse values that could only give an empty release, a traceback or a hang (NaN fails every test)."""
    if not 0 <= params.max_cloud <= 100:
        raise UserError(f"--max-cloud {params.max_cloud} must be a percentage in [0, 100]")
    if not params.max_gap_days >= 0:
        raise UserError(f"--max-gap-days {params.max_gap_days} must be a number of days >= 0")
    if not 0 < params.min_valid <= 1:
        raise UserError(f"--min-valid {params.min_valid} must be in (0, 1]")
    if not 0 <= params.heldout_fraction <= 1:
        raise UserError(f"--heldout-fraction {params.heldout_fraction} must be in [0, 1]")
    years = params.naip_years
    if years and years[0] > years[1]:
        raise UserError(f"--naip-years {years[0]}-{years[1]} ends before it starts; give FIRST-LAST")
    for name, value in (("--metatile", params.metatile_levels), ("--split-levels", params.split_levels)):
        if not (isinstance(value, int) and value >= 0):
            raise UserError(f"{name} {value} must be a whole number of levels >= 0")
