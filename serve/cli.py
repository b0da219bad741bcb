"""`curate serve`: the HTTP service for tiles, triplets and training shards."""

from __future__ import annotations

from pathlib import Path

import click

from curate.errors import UserError


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Data directory holding releases (the OUT of `curate build`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="uvicorn worker processes (stateless; each indexes the manifests once).")
@click.option("--cache-mb", default=256, show_default=True, type=click.IntRange(0, 1 << 20),
              help="In-memory tile cache per worker, MiB.")
def serve(data_dir: Path, host: str, port: int, workers: int, cache_mb: int) -> None:
    """Serve finished releases: XYZ tiles, TileJSON, triplets, WebDataset shards and a map viewer."""
    if not data_dir.is_dir():
        raise UserError(f"--data {data_dir} is not a directory; pass the OUT directory of `curate build`")
    from curate.release import list_releases

    if not any(True for _ in list_releases(data_dir)):
        click.echo(f"warning: no finished release (with manifest.parquet) under {data_dir} yet", err=True)
    from serve.runner import run

    click.echo(f"serving {data_dir} on http://{host}:{port}/ with {workers} worker(s)", err=True)
    run(data_dir, host=host, port=port, workers=workers, cache_mb=cache_mb)
