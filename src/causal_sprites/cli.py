"""The `causal-sprites` command line (typer): parse, call the API, print.

Exit codes: 0 success, 1 bad input or a failed check (one `error: ...` line on stderr), 2 usage.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import typer
from matplotlib.figure import Figure
from typer.core import TyperGroup

from causal_sprites.data import dsprites
from causal_sprites.data.factors import parse_assignments
from causal_sprites.errors import CausalSpritesError


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
data_app = _typer("The dSprites data: generate, verify, download, show.")
app.add_typer(data_app, name="data")


def write_png(fig: Figure, out: Path) -> Path:
    """Save a figure as PNG atomically (temp file, then rename); returns `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _sample_grid(data: dsprites.DSprites, rows: np.ndarray, num: int, seed: int, out: Path) -> Path:
    """Write a labelled grid of up to `num` random images among `rows` to `out`."""
    from causal_sprites.viz import sample_grid_figure

    chosen = np.random.default_rng(seed).choice(rows, size=min(num, len(rows)), replace=False)
    return write_png(sample_grid_figure(data.images(chosen), data.classes(chosen)), out)


DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="dSprites .npz or .hdf5 (default: the default data)."),
]


OutDirOption = Annotated[
    Path | None, typer.Option("--out", help="Directory (default: the data directory).")
]


@data_app.command("generate")
def data_generate(
    out: OutDirOption = None,
) -> None:
    """Write the default data (the procedural generator) as an official-format .npz."""
    typer.echo(dsprites.generate((out or dsprites.data_dir()) / dsprites.DEFAULT_FILENAME))


@data_app.command("verify")
def data_verify(
    path: Annotated[Path, typer.Argument(help="A dSprites .npz or .hdf5 file.")],
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 (hex).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Exit 0 if PATH is a valid, complete dSprites file (keys, shapes, order, checksum)."""
    summary = dsprites.verify(path, sha256)
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"ok: {path} ({summary['format']}, {summary['num_images']} images, "
            f"sha256 {summary['sha256']}, checksum {summary['checksum']})"
        )


@data_app.command("download")
def data_download(
    out: OutDirOption = None,
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 (hex).")] = None,
    hdf5: Annotated[bool, typer.Option("--hdf5", help="The .hdf5 twin, not the .npz.")] = False,
    url: Annotated[str | None, typer.Option(help="Fetch from here instead.")] = None,
) -> None:
    """Download the official file, verify it, and move it into place only when whole."""
    official = dsprites.OFFICIAL_HDF5_URL if hdf5 else dsprites.OFFICIAL_URL
    typer.echo(dsprites.download(out, url=url or official, sha256=sha256))


@data_app.command("show")
def data_show(
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    data: DataOption = None,
    given: Annotated[
        list[str] | None, typer.Option(help="Only images with factor=value, e.g. shape=heart.")
    ] = None,
    num: Annotated[int, typer.Option(min=1, help="Number of images.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed of the choice.")] = 0,
) -> None:
    """A PNG grid of random images (or of those matching --given), labelled with factors."""
    assignments = parse_assignments(given or [])
    store = dsprites.DSprites.load(data)
    rows = store.find(**assignments)
    if not len(rows):
        fail(f"no images match {' '.join(given or [])}")
    typer.echo(_sample_grid(store, rows, num, seed, out))


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/demo"),
) -> None:
    """The main job on the default data (generated on first use); for now, a grid of samples."""
    store = dsprites.DSprites.load()
    typer.echo(_sample_grid(store, np.arange(len(store)), 16, 0, out / "samples.png"))


def main() -> None:
    """Console-script entry point (`causal-sprites`)."""
    app(prog_name="causal-sprites")
