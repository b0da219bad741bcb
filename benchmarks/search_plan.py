"""The catalog searches a build of a named release makes, computed offline from its plan.

Searches: one per layer per SEARCH_ZOOM block of the plan's metatiles (as `curate build` submits them).
At once: before bounded concurrency every search was submitted together; now --search-concurrency.
Pages (an estimate: the catalog is not asked): items a search returns / the page size, each search at
least one page, from the days it covers and the item rates per block below (stated, not measured):
S1/S2 over their whole archive when --datetime is not given (before), and now within --max-gap-days of
the NAIP captures, taken as the --naip-years given (or NAIP's whole archive).

    python benchmarks/search_plan.py [--release small] [--naip-years 2022-2022] [--max-gap-days 730]
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# Assumed items per day intersecting one z9 block (~60 x 60 km in CONUS): Sentinel-2 L2A items are per
# MGRS tile (110 km, about 3 touch a block) and a point is revisited every 5 days (0.6/day); Sentinel-1
# RTC items are per frame (about 3 per block) every 6-12 days (0.4/day).
ITEMS_PER_DAY = {"s2": 0.6, "s1": 0.4}
ARCHIVE_START = {"s2": date(2015, 6, 27), "s1": date(2014, 10, 10)}  # first sentinel-2-l2a / sentinel-1-rtc items
NAIP_ARCHIVE = (2010, 2023)  # naip collection years on Planetary Computer
NAIP_ITEMS_PER_YEAR = 100 / 2.5  # ~100 quarter-quads (3.75' x 3.75') per block, a state flown every ~2.5 years


def _pages(items: float, page: int) -> int:
    return max(1, math.ceil(items / page))


def main() -> None:
    from scale_alibi.curate.pipeline import BuildParams, group_metatiles, resolve_request, search_blocks
    from scale_alibi.curate.search import PAGE_LIMIT, SearchOptions, search_window
    from scale_alibi.regions import load_release

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--release", default="small")
    p.add_argument("--naip-years", help="FIRST-LAST as given to curate build  [default: NAIP's whole archive]")
    p.add_argument("--max-gap-days", type=float, default=BuildParams.max_gap_days)
    p.add_argument("--until", default="2026-01-01", help="the archive's end (fixed, so figures are reproducible)")
    a = p.parse_args()
    spec = load_release(a.release)
    request = resolve_request(release=spec.name)
    blocks = search_blocks(group_metatiles(request.plan(), request.params.metatile_levels))
    until = date.fromisoformat(a.until)
    first, last = (int(v) for v in a.naip_years.split("-")) if a.naip_years else NAIP_ARCHIVE
    naip_years = last - first + 1
    # the window the build searches, from NAIP captures on the first and the last day of those years
    naip = [{"datetime": f"{first}-01-01T00:00:00Z"}, {"datetime": f"{last}-12-31T00:00:00Z"}]
    start, end = search_window("s1", SearchOptions(max_gap_days=a.max_gap_days), naip) or (None, None)
    assert start is not None and end is not None
    window = {layer: (max(ARCHIVE_START[layer], start.date()), min(until, end.date())) for layer in ITEMS_PER_DAY}
    n = len(blocks)
    print(f"release {spec.name}: z{spec.zoom}, {n} search blocks (z9), {3 * n} searches (3 layers), "
          f"page size {PAGE_LIMIT}; NAIP {first}-{last}, --max-gap-days {a.max_gap_days:g}")
    print("| | searches | at once | S1 pages | S2 pages | NAIP pages | pages |")
    print("|---|---|---|---|---|---|---|")
    naip = n * _pages(NAIP_ITEMS_PER_YEAR * naip_years, PAGE_LIMIT)
    rows = {}
    for label, spans in (("before (whole archive, all at once)", {k: (ARCHIVE_START[k], until) for k in ITEMS_PER_DAY}),
                         ("after (NAIP window, bounded)", window)):
        pages = {k: n * _pages(ITEMS_PER_DAY[k] * (spans[k][1] - spans[k][0]).days, PAGE_LIMIT) for k in ITEMS_PER_DAY}
        at_once = 3 * n if label.startswith("before") else SearchOptions().concurrency
        rows[label] = pages
        print(f"| {label} | {3 * n} | {at_once} | {pages['s1']} | {pages['s2']} | {naip} | "
              f"{pages['s1'] + pages['s2'] + naip} |")
    for k in ITEMS_PER_DAY:
        print(f"{k}: searched {window[k][0]}..{window[k][1]} (before {ARCHIVE_START[k]}..{until})")


if __name__ == "__main__":
    main()
