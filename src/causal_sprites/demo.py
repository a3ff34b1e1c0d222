"""The main job end to end on the default data: data, a few minutes of training, evaluation,
figures and report of the trained model, then the same of the shipped pretrained model, so the
demo shows a right answer even where a few minutes on a busy machine cannot train one; every step
prints where its output went and which model made it."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import typer

from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.evaluation import evaluate
from causal_sprites.figures import write_json, write_run_figures
from causal_sprites.report import write_report
from causal_sprites.runs import CHECKPOINT_FILE
from causal_sprites.runtime import choose_device, threads_for_load
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

#: A model answers right when it reads every factor off the pixels image-equivalently this often
#: (the target of reading factors off pixels) and reconstructs with at least this mean IoU.
RIGHT_READOUT = 0.98
RIGHT_IOU = 0.98


def shortfalls(scores: dict[str, Any]) -> list[str]:
    """Why a model's answers cannot be trusted yet, from its `evaluate` scores (empty: right)."""
    found = []
    read = scores["readout"]["posterior"]["image_equivalent"]
    for factor in read:
        if factor != "overall" and read[factor] < RIGHT_READOUT:
            found.append(f"reads {factor} right {read[factor]:.3f} of the time (< {RIGHT_READOUT})")
    if scores["recon_iou"] < RIGHT_IOU:
        found.append(f"reconstructs with IoU {scores['recon_iou']:.3f} (< {RIGHT_IOU})")
    return found


def write_outputs(
    model: CausalModel, data: DSprites, out: Path, label: str
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a model and write its metrics, figures and report into `out`; print them."""
    scores = evaluate(model, data)
    typer.echo(
        f"{label}: test NELBO {scores['test_nelbo']:.3f} nats/image, reconstruction IoU "
        f"{scores['recon_iou']:.4f}"
    )
    paths = {"metrics": write_json(out / "evaluation.json", scores)}
    paths.update(write_run_figures(model, data, out))
    paths["report"] = write_report(model, data, out / "report.html", scores=scores)
    for name, path in paths.items():
        typer.echo(f"{name:>16}: {path}")
    return scores, paths


def run_demo(
    out: Path, minutes: float = 4.0, device: str = "auto", progress: bool = True
) -> dict[str, Any]:
    """Generate data if missing, train (or reuse) `out/run`, evaluate it and write its figures
    into `out`; then the shipped pretrained model's into `out/pretrained`."""
    data = DSprites.load()
    typer.echo(f"data: {len(data)} images")
    run_dir = out / "run"
    if (run_dir / CHECKPOINT_FILE).is_file():
        typer.echo(f"train: reusing {run_dir} (delete it to train afresh)")
    else:
        default = PRESETS["default"]
        config = replace(default, train=replace(default.train, max_minutes=minutes))
        chosen = choose_device(device)
        if chosen.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(threads_for_load())
            typer.echo(f"train: {torch.get_num_threads()} torch thread(s) for the cores free now")
        fit(run_dir, config, data, chosen, progress=progress)
    trained = f"the model trained here ({run_dir})"
    scores, paths = write_outputs(load_run(run_dir), data, out, trained)
    pretrained_scores, pretrained_paths = write_outputs(
        load_run("pretrained"), data, out / "pretrained", "the shipped pretrained model"
    )
    missing = shortfalls(scores)
    best = run_dir
    if missing:
        best = Path("pretrained")
        typer.echo(f"note: {trained} is not right yet: it " + "; ".join(missing))
        typer.echo(f"      use the pretrained model's answers: {out / 'pretrained'}")
    else:
        typer.echo(f"{trained} reads every factor off the pixels right (>= {RIGHT_READOUT})")
    typer.echo(f"open the report in a browser: {paths['report']}")
    typer.echo(f"         the pretrained model's: {pretrained_paths['report']}")
    command = Path(sys.executable).with_name("causal-sprites")  # not on PATH outside the venv
    typer.echo(f"explore the answers in the web app: {command} app {best}")
    return {
        "scores": scores,
        "paths": paths,
        "pretrained": {"scores": pretrained_scores, "paths": pretrained_paths},
        "shortfalls": missing,
    }
