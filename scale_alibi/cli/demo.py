"""`curate demo`: the whole pipeline offline, end to end, on the synthetic world.

Renders the world, serves it (real STAC API + COG file server on loopback), builds a release
from it with `curate build`, publishes the release with `curate serve`, and optionally trains
the `tiny` model from that server for a few steps. Every step is the real code path; only the
catalog is local instead of Planetary Computer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

from scale_alibi.contract.errors import UserError


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="Directory for the world, the release and training runs.")
@click.option("--zoom", type=click.IntRange(13, 18), default=17, show_default=True, help="Base zoom Y of the release.")
@click.option("--train-steps", type=click.IntRange(min=0), default=20, show_default=True,
              help="Steps of `curate train --config tiny` from the server (0: skip training).")
@click.option("--keep-serving", is_flag=True, help="Leave the tile server running until Ctrl-C (open the viewer).")
def demo(out: Path, zoom: int, train_steps: int, keep_serving: bool) -> None:
    """Make and serve the synthetic world, build a release from it, serve it, train on it."""
    from shapely.geometry import box

    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
    from scale_alibi.devworld import DEFAULT_WORLD, build_world, serve_world
    from scale_alibi.serve.process import ServerProcess

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    release = f"demo-z{zoom}"
    click.echo(f"[1/4] rendering the synthetic world into {out / 'world'} (cached after the first run)")
    world_dir = build_world(out / "world", DEFAULT_WORLD)
    with serve_world(world_dir) as world:
        click.echo(f"      STAC API {world.stac_url}   COG files {world.files_url}")
        click.echo(f"[2/4] curate build --region <world bbox> --zoom {zoom} --catalog {world.stac_url} --release {release}")
        request = resolve_request(region=box(*world.bbox), zoom=zoom, release=release, catalog=world.stac_url)
        result = build_release(out / "releases", request, RunOptions(signer="none", progress=True, echo=click.echo))
    tiles = out / "releases" / release
    click.echo(f"      {result.triplets} complete triplets of {result.planned} planned tiles in {result.seconds:.0f} s")
    click.echo(f"      tiles: {tiles}/{{s1,s2,naip}}/<z>/<x>/<y>.png   manifest: {tiles / 'manifest.parquet'}")

    from scale_alibi.contract.reader import StoredRelease
    from scale_alibi.model.data.stats import compute_stats, write_stats

    built = StoredRelease(out / "releases", release)
    stats_path = write_stats(built, compute_stats(built))
    click.echo(f"      curate stats: per-channel normalisation stats in {stats_path}")

    click.echo(f"[3/4] curate serve --data {out / 'releases'}")
    with ServerProcess(out / "releases") as server:
        click.echo(f"      viewer {server.url}/   tiles {server.url}/tiles/{release}/s2/{{z}}/{{x}}/{{y}}.png")
        if train_steps:
            run_dir = out / "runs" / f"tiny-{int(time.time())}"
            click.echo(f"[4/4] curate train --config tiny --steps {train_steps} --out {run_dir}")
            cmd = [sys.executable, "-m", "scale_alibi", "train", "--server", server.url, "--release", release,
                   "--config", "tiny", "--steps", str(train_steps), "--batch-size", "16", "--out", str(run_dir),
                   "--checkpoint-every", "0"]
            if subprocess.call(cmd) != 0:
                raise UserError(f"training failed; see the output above, rerun with: {' '.join(cmd[2:])}")
        else:
            click.echo("[4/4] training skipped (--train-steps 0)")
        if keep_serving:
            click.echo(f"serving {server.url}/ until Ctrl-C")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    click.echo(f"done: release {release} at {tiles}")
