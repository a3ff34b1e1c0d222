"""What every command shares: the typer app whose errors become one line, the common options,
loading a run with its data, writing figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from matplotlib.figure import Figure
from typer.core import TyperGroup

from causal_sprites.data.load import load_data
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.figures import save_figure
from causal_sprites.scm.queries import load_run


def fail(message: str) -> NoReturn:
    """Print `error: <message>` as one line on stderr and exit 1."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(1)


class _Group(TyperGroup):
    """A command group whose commands' bad-input errors become one line and exit 1, never a
    traceback: commands just raise CausalSpritesError (or hit an OSError)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (CausalSpritesError, OSError) as error:
            fail(str(error))


def _typer(help: str) -> typer.Typer:
    """A command group with the one-line error handling of `_Group`."""
    return typer.Typer(
        cls=_Group,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


app = _typer("Causal modelling of dSprites: a conditional VAE inside a structural causal model.")
data_app = _typer("Data: generate, verify, download, show dSprites; import and inspect your own.")
app.add_typer(data_app, name="data")


DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="A dataset file (`data import`) or a dSprites .npz/.hdf5 (default: the run's data, "
        "else the default dSprites data).",
    ),
]
OutDirOption = Annotated[
    Path | None, typer.Option("--out", help="Directory (default: the data directory).")
]
RunArgument = Annotated[str, typer.Argument(help="Run directory, or `pretrained`.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, mps.")]
SamplesOption = Annotated[int, typer.Option("--samples", min=1, max=4096, help="Images to draw.")]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
#: Sample images drawn in a figure (the JSON lists them all).
FIGURE_IMAGES = 64


def write_png(fig: Figure, out: Path) -> Path:
    """Save a figure as PNG atomically; returns `out`."""
    return save_figure(fig, out)


def load_run_and_data(run: str, data: Path | None = None) -> tuple[Any, Any]:
    """The run's model and the data it was trained on (or --data: a dataset file or dSprites');
    reading factors off many images shows a bar on a terminal."""
    model = load_run(run, progress=True)
    return model, run_data(model, run, data)


def run_data(model: Any, run: str, data: Path | None = None) -> Any:
    """The data a run was trained on (or --data); data of another schema is refused."""
    path = data or (Path(model.config.data) if model.config.data else None)
    store = load_data(path)
    if store.schema.names != model.schema.names or (
        store.schema.image_shape != model.schema.image_shape
    ):
        raise CausalSpritesError(
            f"the data ({store.schema.name}: factors {', '.join(store.schema.names)}, images "
            f"{_shape_text(store.schema)}) is not what run {run} was trained on "
            f"({model.schema.name}: {', '.join(model.schema.names)}, images "
            f"{_shape_text(model.schema)})"
        )
    return store


def _shape_text(schema: Schema) -> str:
    """`64x64x3 (height x width x channels)`: a schema's image shape in a message."""
    return f"{'x'.join(map(str, schema.image_shape))} (height x width x channels)"


def assignment_text(assignments: Mapping[str, float], schema: Schema) -> str:
    """`shape=heart, scale=3`: factor values as a user would type them."""
    return ", ".join(
        f"{name}={schema.factor(name).text(value)}" for name, value in assignments.items()
    )
