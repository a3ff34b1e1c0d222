"""`train` (one process or torchrun), `train-oracle` and the end-to-end `demo`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from causal_sprites.cli.common import (
    DataOption,
    DeviceOption,
    JsonOption,
    app,
    write_png,
)
from causal_sprites.config import PRESETS, parse_graph
from causal_sprites.data import dsprites
from causal_sprites.data.load import load_data
from causal_sprites.data.schema import Schema
from causal_sprites.data.variant_spec import load_graph
from causal_sprites.demo import run_demo
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.nets import pose_draws
from causal_sprites.model.pixels import bits_per_dim
from causal_sprites.oracle import train_oracle as fit_oracle
from causal_sprites.runs import astray_warning, read_metrics
from causal_sprites.runtime import init_distributed, leave_distributed
from causal_sprites.train import fit
from causal_sprites.viz import nelbo_curve_figure


@app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="Run directory to create (or resume).")],
    data: DataOption = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="default, continuous-sprites, images, baseline or tiny (default: default on "
            "dSprites and its variants, continuous-sprites on its continuous variants, images on "
            "any other data)."
        ),
    ] = None,
    minutes: Annotated[float | None, typer.Option(min=0, help="Stop after M minutes.")] = None,
    epochs: Annotated[float | None, typer.Option(min=0, help="Stop after E epochs.")] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Stop after N steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: DeviceOption = "auto",
    checkpoint_every: Annotated[
        int | None, typer.Option(min=1, help="Checkpoint every STEPS steps.")
    ] = None,
    graph: Annotated[str | None, typer.Option(help='Factor DAG, e.g. "shape->scale".')] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option(min=0)] = None,
    decoder_lr: Annotated[
        float | None, typer.Option(min=0, help="The decoder's learning rate (default: --lr's).")
    ] = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option(
            help="constant; cosine (anneal to 2 % over the budget); decay (constant, then "
            "anneal over the budget's last fifth)."
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="random or heldout.")] = None,
    subset: Annotated[int | None, typer.Option(min=1, help="Train on N images only.")] = None,
    bf16: Annotated[bool | None, typer.Option(help="bfloat16 autocast.")] = None,
    pixel_sample: Annotated[
        bool | None, typer.Option(help="Subsampled (unbiased) reconstruction term in training.")
    ] = None,
    change_weight: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Charge the decoder for small changes when one factor is redrawn (8-bit images; "
            "README: the small-change term).",
        ),
    ] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Clip a step's gradient norm at G times the median of the last 100 steps' norms "
            "(0: none; the images preset clips at 5).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard events.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    graph_from: Annotated[
        Path | None, typer.Option(help="Take the factor DAG from a variant spec.")
    ] = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="Launch N processes with torchrun (DDP) on this machine.")
    ] = 1,
) -> None:
    """Train the conditional VAE (or resume it exactly where it stopped)."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_torchrun(nproc))

    if preset is not None and preset not in PRESETS:
        raise CausalSpritesError(f"unknown preset {preset!r}; choose {', '.join(PRESETS)}")
    if lr_schedule not in (None, "constant", "cosine", "decay"):
        raise CausalSpritesError(
            f"unknown --lr-schedule {lr_schedule!r}; use constant, cosine or decay"
        )
    if split not in (None, "random", "heldout"):
        raise CausalSpritesError(f"unknown split {split!r}; use random or heldout")
    if minutes is None and epochs is None and steps is None:
        raise CausalSpritesError("give a budget: --minutes, --epochs or --steps")
    store = load_data(data)
    base = PRESETS[preset or default_preset(store.schema)]
    overrides: dict[str, Any] = {
        "seed": seed,
        "checkpoint_every": checkpoint_every,
        "batch_size": batch_size,
        "lr": lr,
        "decoder_lr": decoder_lr,
        "lr_schedule": lr_schedule,
        "split": split,
        "subset": subset,
        "bf16": bf16,
        "pixel_sample": pixel_sample,
        "change_weight": change_weight,
        "grad_clip": grad_clip,
    }
    train_config = replace(
        base.train,
        max_minutes=minutes,
        max_epochs=epochs,
        max_steps=steps,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    config = replace(
        base,
        train=train_config,
        data=str(data) if data else None,
        graph=_graph(graph, graph_from) or base.graph,
    )
    distributed, chosen = init_distributed(device)
    progress = progress and distributed.is_main
    final = fit(out, config, store, chosen, resume, progress, tensorboard)
    if distributed.is_main:
        records = read_metrics(out)
        write_png(nelbo_curve_figure(records), out / "nelbo.png")
        dims = math.prod(store.schema.image_shape)
        typer.echo(
            f"{out}: step {final['step']}, test NELBO {final['test_nelbo']:.3f} nats/image, "
            f"{bits_per_dim(final['test_nelbo'], dims):.4f} bits/dim (recon "
            f"{final['test_recon']:.3f}, KL {final['test_kl']:.3f})"
        )
        warning = astray_warning(records)
        if warning is not None:
            typer.echo(f"warning: {warning}", err=True)
    leave_distributed()


def _graph(text: str | None, spec: Path | None) -> tuple[tuple[str, str], ...]:
    """The factor DAG from --graph or --graph-from (not both)."""
    if text and spec:
        raise CausalSpritesError("give --graph or --graph-from, not both")
    if spec is not None:
        return load_graph(spec)
    return parse_graph(text) if text else ()


def default_preset(schema: Schema) -> str:
    """The preset `train` starts from when none is named: dSprites' pose decoder for binary
    data it draws (`continuous-sprites` where some factor is continuous), else `images`."""
    if not (pose_draws(schema) and schema.binary):
        return "images"
    return "default" if schema.categorical else "continuous-sprites"


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun with `nproc` processes; returns its exit code."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--nproc":
            skip = not skip
            continue
        if not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "causal_sprites", *args]  # fmt: skip
    return subprocess.call(command)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(min=0, help="Training minutes.")] = 4.0,
    device: DeviceOption = "auto",
) -> None:
    """The main job end to end on the default data: data, training, evaluation, figures."""
    run_demo(out, minutes, device)


@app.command("train-oracle")
def train_oracle(
    out: Annotated[Path, typer.Option("--out", help="Directory for oracle.safetensors + .json.")],
    data: DataOption = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (batches of 64).")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Train the oracle factor classifier on real images (for the soundness metrics)."""
    oracle = fit_oracle(dsprites.DSprites.load(data), steps, seed, out, log_every=0)
    if json_out:
        typer.echo(json.dumps({"out": str(out), **oracle.info}))
        return
    scores = ", ".join(f"{k} {v:.3f}" for k, v in oracle.info["accuracy"].items())
    typer.echo(f"{out}: held-out accuracy {scores}")
