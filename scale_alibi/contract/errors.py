"""The package's exceptions: one root, and the one way user-facing failures are reported.

Every exception class scale_alibi defines derives from `ScaleAlibiError`, so a caller (a notebook, a
service embedding the server) can tell the package's failures from everything else with one
`except`. `UserError` is one line, what went wrong and what to do, exit 2: a plain exception, so the
layers below the command line stay free of click; the `curate` command (scale_alibi.cli.main) prints
it as `error: <message>` on stderr and exits with `exit_code`.
"""

from __future__ import annotations


class ScaleAlibiError(Exception):
    """The root of every exception class the package defines."""


class UserError(ScaleAlibiError):
    """A problem with the user's input or environment, printed as one line; exits with code 2."""

    exit_code = 2
