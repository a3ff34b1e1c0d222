"""The CLI as the tests call it: one invocation with its exit code checked, and for exit 1 the
one-line `error: ...` contract (no traceback)."""

from __future__ import annotations

from typer.testing import CliRunner

from causal_sprites.cli import app

PNG = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def run(*args: object, code: int = 0) -> tuple[str, str]:
    """Run the CLI; check the exit code (and the one-line error of exit 1); (stdout, stderr)."""
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    if code == 1:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.output
    return result.stdout, result.stderr
