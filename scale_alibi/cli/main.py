"""The `curate` command line: one group, each subcommand in the module that owns its concept.

Subcommands are imported lazily so that `curate plan` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from scale_alibi import __version__
from scale_alibi.contract.errors import UserError

# name -> "module:attribute" of a click.Command; each module owns its own options and help.
COMMANDS: dict[str, str] = {
    "train": "scale_alibi.cli.train:train",
    "plan": "scale_alibi.cli.plan:plan",
    "build": "scale_alibi.cli.build:build",
    "stats": "scale_alibi.cli.stats:stats",
    "verify": "scale_alibi.cli.verify:verify",
    "serve": "scale_alibi.cli.serve:serve",
    "world": "scale_alibi.cli.world:world",
    "demo": "scale_alibi.cli.demo:demo",
    "pack": "scale_alibi.cli.pack:pack",
    "import-pmtiles": "scale_alibi.cli.import_pmtiles:import_pmtiles",
    "eval": "scale_alibi.cli.eval:eval_command",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used, and
    reports a UserError from anywhere below it as one line."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's `main`; a UserError (raised by a command, an option's callback or type) prints
        `error: <message>` on stderr and exits with its code, as click does for its own errors."""
        try:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        except UserError as e:
            if not standalone_mode:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)

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
