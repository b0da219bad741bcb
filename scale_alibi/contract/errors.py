"""The one way user-facing failures are reported: one line, what went wrong and what to do, exit 2."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A problem with the user's input or environment, printed as one line; exits with code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - click's signature
        click.echo(f"error: {self.format_message()}", err=True, file=file)
