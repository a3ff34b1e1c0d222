"""`causal-sprites data ...`: generate, verify, download, show the data; sample a causal variant;
import any factor-labelled image set as a dataset file and describe one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from causal_sprites.cli.common import (
    DataOption,
    JsonOption,
    OutDirOption,
    data_app,
    fail,
    write_png,
)
from causal_sprites.data import dsprites, pendulum
from causal_sprites.data.continuous_spec import ContinuousSpec
from causal_sprites.data.continuous_variants import sample_continuous
from causal_sprites.data.dataset import Dataset, describe, load_dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.importers import import_source
from causal_sprites.data.load import load_data
from causal_sprites.data.pictures import size_text
from causal_sprites.data.variant_spec import load_any
from causal_sprites.data.variants import sample_variant
from causal_sprites.scm.factor_sampling import holds, parse_evidence
from causal_sprites.viz import sample_grid_figure


def _sample_grid(
    data: DSprites | Dataset, rows: np.ndarray, num: int, seed: int, out: Path
) -> Path:
    """Write a labelled grid of up to `num` random images among `rows` to `out`."""
    chosen = np.random.default_rng(seed).choice(rows, size=min(num, len(rows)), replace=False)
    figure = sample_grid_figure(data.images(chosen), data.factors(chosen), data.schema)
    return write_png(figure, out)


DATASETS = ("dsprites", "pendulum")


@data_app.command("generate")
def data_generate(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="dsprites: the directory (default: the data directory); pendulum: the dataset "
            ".npz to write.",
        ),
    ] = None,
    dataset: Annotated[str, typer.Option(help="dsprites or pendulum.")] = "dsprites",
    num_samples: Annotated[
        int | None,
        typer.Option(help=f"Pendulum images (default {pendulum.DEFAULT_NUM_SAMPLES:,})."),
    ] = None,
    size: Annotated[int, typer.Option(help="Pendulum image side: 64 or 96 pixels.")] = 64,
    shadow_noise: Annotated[
        float, typer.Option(help="SD of the pendulum's shadow noise, world units (0: none).")
    ] = 0.0,
    grid: Annotated[
        str | None, typer.Option(help="causalvae: CausalVAE's own 7,308-image pendulum grid.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (pendulum).")] = 0,
) -> None:
    """Write the default data (dSprites' procedural generator, an official-format .npz), or the
    pendulum of CausalVAE as a dataset file with its shadow noise recorded."""
    if dataset not in DATASETS:
        fail(f"unknown dataset {dataset!r}; datasets are {', '.join(DATASETS)}")
    if dataset == "dsprites":
        given = {
            "--num-samples": num_samples is not None,
            "--size": size != 64,
            "--shadow-noise": shadow_noise != 0.0,
            "--grid": grid is not None,
            "--seed": seed != 0,
        }
        used = [flag for flag, is_given in given.items() if is_given]
        if used:
            fail(f"{used[0]} is for --dataset pendulum; dSprites' default data has no options")
        typer.echo(dsprites.generate((out or dsprites.data_dir()) / dsprites.DEFAULT_FILENAME))
        return
    if out is None:
        fail("--dataset pendulum needs --out, the dataset .npz to write")
    path, num = pendulum.write(out, num_samples, size, shadow_noise, seed, grid)
    typer.echo(
        f"{path}: {num:,} images of the pendulum ({size_text(size, size)}, shadow noise "
        f"{shadow_noise:g} world units)"
    )


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
        list[str] | None,
        typer.Option(
            help="Only images with factor=value, e.g. shape=heart (a continuous factor within "
            "1 % of its range, or a range: angle=10..12)."
        ),
    ] = None,
    num: Annotated[int, typer.Option(min=1, help="Number of images.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed of the choice.")] = 0,
) -> None:
    """A PNG grid of random images (or of those matching --given), labelled with factors; any
    dataset file, or dSprites'."""
    store = load_data(data)
    evidence = parse_evidence(store.schema, given or [])  # a continuous value within 1 %
    factors = torch.as_tensor(np.asarray(store.factors(slice(None))))
    rows = np.flatnonzero(holds(factors, evidence, store.schema).numpy())
    if not len(rows):
        fail(f"no images match {' '.join(given or [])}")
    typer.echo(_sample_grid(store, rows, num, seed, out))


@data_app.command("variant")
def data_variant(
    spec: Annotated[Path, typer.Argument(help="Variant spec: a factor-level SCM (YAML or JSON).")],
    out: Annotated[Path, typer.Option("--out", help="The .npz to write.")],
    num_samples: Annotated[
        int | None, typer.Option(min=1, help="Override the spec's num_samples.")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override the spec's seed.")] = None,
) -> None:
    """Sample a causal variant with each sample's noise and the spec: of dSprites' classes an
    official-format .npz, of a base dataset or with continuous factors a dataset file."""
    loaded = load_any(spec)
    if num_samples is not None:
        loaded = dataclasses.replace(loaded, num_samples=num_samples)
    if seed is not None:
        loaded = dataclasses.replace(loaded, seed=seed)
    if isinstance(loaded, ContinuousSpec):
        path = sample_continuous(loaded, out)
    else:
        path = sample_variant(loaded, out)
    edges = loaded.graph_string() or "no edges"
    typer.echo(f"{path}: {loaded.num_samples} samples of {loaded.name} ({edges})")


@data_app.command("import")
def data_import(
    src: Annotated[
        Path,
        typer.Argument(
            help="A CSV naming image files, a 3dshapes .h5, an MPI3D .npz, a dSprites file "
            "or a dataset file."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The dataset .npz to write.")],
    factors: Annotated[
        Path | None,
        typer.Option(
            "--factors",
            help="A factors file (factors.yaml): a CSV's factor kinds, classes, columns.",
        ),
    ] = None,
) -> None:
    """Write SRC as a dataset file (images, factors, schema); print what was inferred."""
    path, lines = import_source(src, out, factors)
    for line in lines:
        typer.echo(line)
    typer.echo(path)


@data_app.command("info")
def data_info(
    dataset: Annotated[Path, typer.Argument(help="A dataset file (.npz).")],
    json_out: JsonOption = False,
) -> None:
    """The schema, image shape, number of images, counts per class and continuous ranges."""
    data = load_dataset(dataset)
    summary = data.summary()
    if json_out:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{dataset}: {data.schema.name}, {len(data):,} images")
    for line in describe(data.schema):
        typer.echo(line)
    for factor in data.schema.factors:
        if factor.kind == "categorical":
            counts = zip(factor.classes, summary["counts"][factor.name], strict=True)
            shown = [f"{name} ({count})" for name, count in counts]
            more = f", ... ({factor.size} classes)" if len(shown) > 20 else ""
            typer.echo(f"  {factor.name} counts: {', '.join(shown[:20])}{more}")
        else:
            low, high = summary["ranges"][factor.name]
            typer.echo(f"  {factor.name} in the data: {low:g}..{high:g}")
