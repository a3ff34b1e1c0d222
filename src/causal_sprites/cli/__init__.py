"""The `causal-sprites` command line (typer): parse, call the API, print. One module per group of
commands; importing them registers their commands on `app`, in the order `--help` lists them.

Exit codes: 0 success, 1 bad input or a failed check (one `error: ...` line on stderr), 2 usage.
"""

# isort: skip_file
from causal_sprites.cli.common import app
from causal_sprites.cli import training, queries, causal, data, benchmark

__all__ = ["app", "benchmark", "causal", "data", "main", "queries", "training"]


def main() -> None:
    """Console-script entry point (`causal-sprites`)."""
    app(prog_name="causal-sprites")
