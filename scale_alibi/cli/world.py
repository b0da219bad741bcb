"""`curate world build|serve`: make the synthetic world and serve it by hand (offline demo)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from scale_alibi.contract.errors import UserError


class _OneLine(click.Command):
    """Report bad parameters as one line (exit 2) instead of click's usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise UserError(f"{e.format_message()} (see `curate world {self.name} --help`)") from None


def _parse_bbox(text: str | None):
    from scale_alibi.devworld.config import DEFAULT_WORLD, WorldConfig

    if text is None:
        return DEFAULT_WORLD
    try:
        vals = tuple(float(v) for v in text.split(","))
        if len(vals) != 4:
            raise ValueError("need 4 numbers")
        return WorldConfig(bbox=vals)
    except ValueError as e:
        raise UserError(f"invalid --bbox {text!r}: {e}; give W,S,E,N in degrees, e.g. -102.02,35.18,-101.98,35.22") from None


@click.group("world")
def world() -> None:
    """Make and serve the synthetic offline world (Planetary-Computer-shaped STAC + COGs)."""


@world.command("build", cls=_OneLine)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Directory to render the world into (new, empty, or a previous world).")
@click.option("--bbox", default=None, help="W,S,E,N in degrees (default: ~4x4 km around -102.0, 35.2, straddling UTM zones 13/14).")
def build_cmd(out: Path, bbox: str | None) -> None:
    """Render the world's COGs and STAC catalog into --out (cached: a no-op when already built)."""
    from scale_alibi.devworld.build import build_world

    cfg = _parse_bbox(bbox)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    t0 = time.perf_counter()
    path = build_world(out, cfg)
    click.echo(f"world {cfg.key()} at {path} ({time.perf_counter() - t0:.1f} s)")


@world.command("serve", cls=_OneLine)
@click.argument("world_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--stac-port", default=0, type=click.IntRange(0, 65535), help="STAC API port (default: a free one).")
@click.option("--files-port", default=0, type=click.IntRange(0, 65535), help="File server port (default: a free one).")
@click.option("--advertise", default=None, help="Host name clients use in URLs and hrefs (default: --host), e.g. a compose service.")
def serve_cmd(world_dir: Path, host: str, stac_port: int, files_port: int, advertise: str | None) -> None:
    """Serve a built world: STAC API (rustac) and COG file server, until Ctrl-C."""
    from scale_alibi.devworld.serve import serve_world

    if not world_dir.is_dir():
        raise UserError(f"{world_dir} is not a directory; build one with `curate world build --out {world_dir}`")
    with serve_world(world_dir, host=host, stac_port=stac_port, files_port=files_port, advertise=advertise) as w:
        click.echo(f"STAC API:    {w.stac_url}")
        click.echo(f"file server: {w.files_url}")
        click.echo(f"tokens:      {w.files.token_url}  (PC_SDK_SAS_URL for the default --signer)")
        click.echo(f"bbox:        {','.join(f'{v:.5f}' for v in w.bbox)}")
        click.echo("Ctrl-C to stop.", err=True)
        # Ctrl-C stops it even where SIGINT came ignored from the parent (a shell's background job,
        # some CI runners): Python keeps an inherited SIG_IGN, and the servers would then outlive it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while w.proc.poll() is None and w.files.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
