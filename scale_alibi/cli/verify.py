"""`curate verify --data OUT --release NAME [--repair]`: check a finished release's files against its
manifest, and repair them.

Every file a manifest row names is re-hashed (sha256) against the row; damage is a file that is
missing, unreadable, truncated or whose hash differs. `--repair` re-cuts only the metatiles that hold
damaged files. Both: scale_alibi.curate.pipeline.repair, which a rerun of `curate build` uses too.
"""

from __future__ import annotations

import sys

import click

from scale_alibi.contract.reader import StoredRelease
from scale_alibi.contract.release import TRIPLET_MEMBERS
from scale_alibi.curate.content import MAX_CONSTANT, constant_tiles
from scale_alibi.curate.pipeline.open_output import open_output
from scale_alibi.curate.pipeline.repair import find_damage, repair
from scale_alibi.curate.pipeline.request import RunOptions


@click.command("verify")
@click.option("--data", "data_dir", required=True,
              help="Data directory or object-store URL (the OUT of `curate build`).")
@click.option("--release", required=True, help="Release to check.")
@click.option("--repair", "do_repair", is_flag=True,
              help="Re-cut the metatiles of damaged files from the catalog and replace those files.")
@click.option("--catalog", default=None, help="STAC API to re-cut from.  [default: the one the manifest records]")
@click.option("--signer", default="planetary-computer", show_default=True,
              help="Href signer for --repair: planetary-computer, none, or module:function.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--content", "check_content", is_flag=True,
              help="Also decode every tile and list those that are mostly one value (black fill, borders).")
@click.option("--max-constant", type=click.FloatRange(0.0, 1.0, min_open=True), default=MAX_CONSTANT,
              show_default=True, help="With --content: the largest share of a tile one pixel value may take.")
def verify(data_dir: str, release: str, do_repair: bool, catalog: str | None, signer: str, progress: bool,
           check_content: bool, max_constant: float) -> None:
    """Re-hash every file of a release against its manifest; list damage; with --repair, re-cut it.

    Exit status: 0 when the release is intact (or was repaired), 1 when damage was found and not
    repaired."""
    stored = StoredRelease(data_dir, release)
    if do_repair:
        stored.check_writable()  # a repair writes: never through a link out of the root or into another release
    # Read and checked (columns, unique in-range rows, sha256 hashes, seal) before any file is hashed:
    # a manifest that lies cannot vouch for the files.
    table = stored.manifest().table
    output = open_output(data_dir, release)
    damage = find_damage(output, table, deep=True, progress=progress)
    total = table.num_rows * len(TRIPLET_MEMBERS)
    constant = _report_constant(output, table, max_constant) if check_content else 0
    for d in damage:
        click.echo(f"damaged: {d.path}: {d.problem}")
    if not damage:
        click.echo(f"release {release}: all {total} files of {table.num_rows} triplets match the manifest")
        if constant:
            sys.exit(1)
        return
    triplets = len({d.triplet for d in damage})
    if not do_repair:
        click.echo(f"release {release}: {len(damage)} of {total} files damaged in {triplets} triplets; run "
                   f"`curate verify --data {data_dir} --release {release} --repair` to re-cut them")
        sys.exit(1)
    left = repair(output, damage, catalog,
                  RunOptions(signer=signer, progress=progress, echo=lambda m: click.echo(m, err=True)))
    if left:
        for line in left:
            click.echo(f"not repaired: {line}")
        click.echo(f"release {release}: {len(left)} of {len(damage)} damaged files could not be repaired")
        sys.exit(1)
    click.echo(f"release {release}: repaired {len(damage)} files in {triplets} triplets; all {total} files "
               "match the manifest")


def _report_constant(output, table, max_constant: float) -> int:
    """List the tiles that are mostly one value (scale_alibi.curate.content); returns how many."""
    found = constant_tiles(table.to_pylist(), output.read, max_constant)
    for t in found:
        click.echo(f"constant: {t.path}: {t.fraction:.0%} of its pixels are {t.value}")
    click.echo(f"content: {len(found)} tiles are more than {max_constant:.0%} one value")
    return len(found)
