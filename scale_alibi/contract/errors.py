"""The one way user-facing failures are reported: one line, what went wrong and what to do, exit 2.

A plain exception, so the layers below the command line stay free of it: the `curate` command
(scale_alibi.cli.main) prints it as `error: <message>` on stderr and exits with `exit_code`.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, printed as one line; exits with code 2."""

    exit_code = 2
