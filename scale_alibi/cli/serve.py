"""`curate serve`: the HTTP service for tiles, triplets and training shards."""

from __future__ import annotations

import click

from scale_alibi.contract.errors import UserError


@click.command()
@click.option("--data", "data_dir", required=True,
              help="Data directory holding releases (the OUT of `curate build`), or a bucket URL such as "
              "s3://bucket/prefix (endpoint and credentials from the AWS_* environment variables).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="uvicorn worker processes (stateless; each indexes the manifests once).")
@click.option("--cache-mb", default=256, show_default=True, type=click.IntRange(0, 1 << 20),
              help="In-memory tile cache per worker, MiB.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a connection has to send a complete request head (after connecting or after "
              "its previous response) before it is closed.")
@click.option("--keep-alive-timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds an idle keep-alive connection stays open after a response.")
def serve(data_dir: str, host: str, port: int, workers: int, cache_mb: int, header_timeout: float,
          keep_alive_timeout: float) -> None:
    """Serve finished releases: XYZ tiles, TileJSON, triplets, WebDataset shards and a map viewer."""
    from scale_alibi.contract.storage import is_remote, local_path

    if not is_remote(data_dir) and not local_path(data_dir).is_dir():
        raise UserError(f"--data {data_dir} is not a directory; pass the OUT directory of `curate build`")
    _check_port(host, port)
    if not _finished_releases(data_dir):
        click.echo(f"warning: no finished release (with manifest.parquet) under {data_dir} yet", err=True)
    from scale_alibi.serve.runner import run

    click.echo(f"serving {data_dir} on http://{host}:{port}/ with {workers} worker(s)", err=True)
    run(data_dir, host=host, port=port, workers=workers, cache_mb=cache_mb, header_timeout=header_timeout,
        keep_alive_timeout=keep_alive_timeout)


def _finished_releases(data_dir: str) -> list[str]:
    """Names of the entries under `data_dir` that have a manifest; UserError when a bucket cannot be read."""
    from scale_alibi.serve.app import open_store
    from scale_alibi.serve.stores import StoreUnavailable

    try:
        return [name for name, _, _ in open_store(data_dir).finished()]
    except (StoreUnavailable, FileNotFoundError) as exc:
        raise UserError(str(exc).rstrip(".")) from None


def _check_port(host: str, port: int) -> None:
    """UserError when `host`:`port` cannot be listened on (most often: another server holds it)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use (another server?); stop it or "
                                "pass another --port") from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                            "pass another --host or --port") from None
