"""`curate pack --data OUT --release R [--out DIR]`: each layer of a finished release as one PMTiles
archive. The archives, their layout and checks: scale_alibi.curate.pack.
"""

from __future__ import annotations

import click

from scale_alibi.curate.pack import pack_release


@click.command("pack")
@click.option("--data", "data", required=True,
              help="Data root holding the release (the OUT of `curate build`): a directory or an object-store URL.")
@click.option("--release", required=True, help="Release name (a directory under --data).")
@click.option("--out", default=None,
              help="Data root (a directory or an object-store URL) to write the packed release into (archives, manifest, stats.json; no tile tree).  "
                   "[default: the archives go beside the manifest]")
def pack(data: str, release: str, out: str | None) -> None:
    """Write each layer of a finished release as one PMTiles archive: s1.pmtiles, s2.pmtiles, naip.pmtiles."""
    for path in pack_release(data, release, out, echo=lambda m: click.echo(m, err=True)):
        click.echo(path)
