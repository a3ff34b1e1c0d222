"""The main job end to end on the default data: data, a few minutes of training, evaluation,
figures; every step prints where its output went."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.evaluation import evaluate
from causal_sprites.figures import write_json, write_run_figures
from causal_sprites.report import write_report
from causal_sprites.runs import CHECKPOINT_FILE
from causal_sprites.runtime import choose_device
from causal_sprites.scm.queries import load_run
from causal_sprites.train import fit


def run_demo(
    out: Path, minutes: float = 4.0, device: str = "auto", progress: bool = True
) -> dict[str, Any]:
    """Generate data if missing, train (or reuse) `out/run`, evaluate it and write its figures."""
    data = DSprites.load()
    typer.echo(f"data: {len(data)} images")
    run_dir = out / "run"
    if (run_dir / CHECKPOINT_FILE).is_file():
        typer.echo(f"train: reusing {run_dir} (delete it to train afresh)")
    else:
        default = PRESETS["default"]
        config = replace(default, train=replace(default.train, max_minutes=minutes))
        fit(run_dir, config, data, choose_device(device), progress=progress)
    model = load_run(run_dir)
    scores = evaluate(model, data)
    typer.echo(
        f"evaluate: test NELBO {scores['test_nelbo']:.3f} nats/image, "
        f"reconstruction IoU {scores['recon_iou']:.4f}"
    )
    paths = {"metrics": write_json(out / "evaluation.json", scores)}
    paths.update(write_run_figures(model, data, out))
    paths["report"] = write_report(model, data, out / "report.html", scores=scores)
    for name, path in paths.items():
        typer.echo(f"{name:>16}: {path}")
    typer.echo(f"open the report in a browser: {paths['report']}")
    command = Path(sys.executable).with_name("causal-sprites")  # not on PATH outside the venv
    typer.echo(f"explore the run in the web app: {command} app {run_dir}")
    return {"scores": scores, "paths": paths}
