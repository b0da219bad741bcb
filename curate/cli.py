"""The `curate` command line: one group, each subcommand in the module that owns its concept.

Subcommands are imported lazily so that `curate plan` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging

import click

from curate import __version__
from curate.errors import UserError

# name -> "module:attribute" of a click.Command; each module owns its own options and help.
COMMANDS: dict[str, str] = {
    "train": "model.train_cli:train",
    "plan": "curate.plan:plan",
    "build": "curate.build_cli:build",
    "stats": "model.stats:stats",
    "verify": "curate.verify:verify",
    "serve": "serve.cli:serve",
    "world": "curate.world.cli:world",
    "demo": "curate.demo:demo",
    "pack": "curate.pack:pack",
    "import-pmtiles": "curate.import_pmtiles:import_pmtiles",
    "eval": "model.eval.cli:eval_command",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def invoke(self, ctx: click.Context):
        # A subcommand's option errors (IntRange, Choice, a missing option) read like every other
        # bad input: one `error:` line and exit 2, instead of click's usage block.
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            name = e.ctx.command_path if e.ctx is not None else ctx.command_path
            raise UserError(f"{e.format_message().rstrip('.')}; see `{name} --help`") from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scale-alibi")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Build, serve and learn from aligned Sentinel-1 / Sentinel-2 / NAIP tile triplets."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
