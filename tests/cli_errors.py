"""How a refused command looks: one `error:` line, exit status 2, no traceback."""

from __future__ import annotations


def one_error_line(result, mentions: str) -> str:
    """The single `error:` line of a refused command (a click CliRunner result, exit 2), which must
    mention `mentions`."""
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert mentions in errors[0], errors[0]
    assert "Traceback" not in result.output
    return errors[0]
