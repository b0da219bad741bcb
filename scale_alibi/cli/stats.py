"""`curate stats --data OUT --release small [--split train] [--limit N] [--workers N]`.

The measurement and the stats.json format: scale_alibi.model.data.stats.
"""

from __future__ import annotations

from pathlib import Path

import click

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.reader import StoredRelease
from scale_alibi.model.data.stats import compute_stats, write_stats


@click.command("stats")
@click.option("--data", "data", required=True, help="Data root holding the release: a directory or an object-store URL (s3://...).")
@click.option("--release", required=True, help="Release name (a directory under --data).")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "heldout", "all"]), help="Which triplets to measure.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Measure at most N evenly spaced triplets.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Decoding processes.")
@click.option("--histogram", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw every layer's per-channel value histogram (the --split triplets) to this PNG.")
def stats(data: str, release: str, split: str, limit: int | None, workers: int, histogram: Path | None) -> None:
    """Per-channel mean/std of every modality of a release, written to <data>/<release>/stats.json."""
    rel = StoredRelease(data, release)
    if not rel.exists():
        raise UserError(f"no release {release!r} under {data}; check --data and --release")
    result = compute_stats(rel, split=split, limit=limit, workers=workers)
    path = write_stats(rel, result)
    click.echo(f"{path}: {result['triplets']} {split} triplets")
    if histogram is not None:
        _draw_histogram(rel, split, histogram)


def _draw_histogram(rel: StoredRelease, split: str, out: Path) -> None:
    """Per-layer histograms of the split's tiles, drawn to `out` (scale_alibi.curate.content)."""
    from scale_alibi.curate.content import draw_histograms, histograms

    rows = [r for r in rel.manifest().table.to_pylist() if split == "all" or r["split"] == split]
    hist = histograms(rows, rel.read)
    try:
        draw_histograms(hist, out)
    except OSError as e:
        raise UserError(f"cannot write --histogram {out} ({e.strerror or e}); choose a writable path") from None
    click.echo(f"{out}: histograms of {len(rows)} {split} triplets")
