"""`curate import-pmtiles --s1 A --s2 B --naip C --out OUT --release R`: a release from one PMTiles
archive per modality (the paper's layout). What is read, checked and written: scale_alibi.curate.import_pmtiles.
"""

from __future__ import annotations

from pathlib import Path

import click

from scale_alibi.curate.import_pmtiles import import_release


@click.command("import-pmtiles")
@click.option("--s1", type=click.Path(path_type=Path), help="Sentinel-1 archive (the paper's `sar`).")
@click.option("--s2", type=click.Path(path_type=Path), help="Sentinel-2 archive (the paper's `visual`).")
@click.option("--naip", type=click.Path(path_type=Path), help="NAIP archive at zooms Y and Y+1 (the paper's `hires`).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Data root to write the release into.")
@click.option("--release", required=True, help="Release name (the folder under --out).")
@click.option("--zoom", type=int, default=None, help="Triplet zoom Y.  [default: the one zoom the archives fit]")
@click.option("--unpack", is_flag=True, help="Write the XYZ tile tree instead of archives.")
@click.option("--heldout-fraction", default=0.25, show_default=True, help="Fraction of spatial blocks held out.")
@click.option("--split-levels", default=2, show_default=True, type=click.IntRange(min=0), help="Split blocks are ancestors this many levels up.")
def import_pmtiles(s1, s2, naip, out, release, zoom, unpack, heldout_fraction, split_levels) -> None:
    """Make a release from one PMTiles archive per modality (the paper's published layout)."""
    rel = import_release(out, release, {"s1": s1, "s2": s2, "naip": naip}, zoom=zoom, unpack=unpack,
                         heldout_fraction=heldout_fraction, split_levels=split_levels,
                         echo=lambda m: click.echo(m, err=True))
    click.echo(str(rel.path))
