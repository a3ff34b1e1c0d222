"""Why a colour-set run misses issue 20's targets: for runs kept by `bench/own_data.py
--keep-runs DIR` (DIR/independent, DIR/variant), on held-out images of the independent set:

- the run's final held-out NELBO (bits/dim, from its metrics.jsonl);
- the decoder's logistic at q(z | x, y)'s mean on the object's edge (object pixels beside the
  background), its interior and the background: mean absolute error of its mean and median
  scale, 0-255;
- for do(shape) and do(hue), the share of answers that show the new class (the nearest exact
  render): the decoder's mode at the abducted z (no pixel noise), and the counterfactual itself,
  which keeps each pixel's abducted noise. Where the decoder's edges are off, that noise holds
  the old object's edges and the counterfactual keeps them though the decoder draws the change;
- of the counterfactuals that do not show the new class, the share that the model's own readers,
  q(y | x) and the posterior's mode, read as the new class all the same: how much a self-check
  of the answer by the model itself could catch (it catches the rest).

Run `.venv/bin/python bench/colour_runs.py RUN [RUN ...] [--out PATH]`; prints a markdown table
and writes bench/results/colour-runs.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import own_data  # bench/, beside this script
import torch

from causal_sprites.model.pixels import bits_per_dim
from causal_sprites.runs import read_metrics
from causal_sprites.scm.inputs import as_images
from causal_sprites.scm.queries import load_run

RESULTS = Path(__file__).resolve().parent / "results"


def edge_pixels(masks: np.ndarray) -> np.ndarray:
    """Object pixels (B, H, W) with a 4-neighbour outside the object: the outline's own side
    (`nets.edge_pixels`, which the pose decoder's training samples, takes both sides)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    inside = padded[:, 2:, 1:-1] & padded[:, :-2, 1:-1] & padded[:, 1:-1, 2:] & padded[:, 1:-1, :-2]
    return masks & ~inside


def diagnose(run: Path, num_images: int) -> dict[str, Any]:
    """The diagnostics above for one run on `num_images` held-out images (seed 1000)."""
    model = load_run(run)
    classes, grey = own_data.independent_draws(num_images, 1000)
    images = own_data.render(classes, grey)
    final = next(r for r in reversed(read_metrics(run)) if "test_nelbo" in r)  # the last eval
    out: dict[str, Any] = {
        "run": str(run),
        "steps": final["step"],
        "bits_per_dim": bits_per_dim(final["test_nelbo"], images[0].size),
    }
    z = model.encode(images, classes)
    params = model.decode_params(classes, z).numpy()
    mean = ((params[:, :3] + 1.0) * 127.5).transpose(0, 2, 3, 1)
    scale = (np.exp(np.maximum(params[:, 3:], -7.0)) * 127.5).transpose(0, 2, 3, 1)
    error = np.abs(mean - images)
    _, shape, size, posx = classes.T
    masks = own_data.MASKS[shape, size, posx]
    edge = edge_pixels(masks)
    for label, where in (("edge", edge), ("interior", masks & ~edge), ("background", ~masks)):
        out[label] = {
            "mean_mae": float(error[where].mean()),
            "median_scale": float(np.median(scale[where])),
        }
    rng = np.random.default_rng(7)
    for name in ("shape", "hue"):
        column = own_data.NAMES.index(name)
        target = own_data.other_classes(classes, column, own_data.SIZES_K[column], rng)
        new = classes.copy()
        new[:, column] = target
        mode = model.decode(new, z)
        answer = model.counterfactual(images, classes, do={name: target}, seed=0)
        missed = own_data.drawn_classes(answer, grey)[:, column] != target
        out[f"do_{name}_shown"] = {
            "decoder_mode": float((own_data.drawn_classes(mode, grey)[:, column] == target).mean()),
            "counterfactual": float(1.0 - missed.mean()),
        }
        if not missed.any():
            out[f"do_{name}_missed_read_as_asked"] = {"num_missed": 0}
            continue
        with torch.no_grad():
            pixels = as_images(answer[missed], model.schema)
            read_by = {
                "classifier": model.model.classify(pixels)[column].argmax(-1).numpy(),
                "posterior": model.infer_labels(answer[missed])[:, column],
            }
        out[f"do_{name}_missed_read_as_asked"] = {
            "num_missed": int(missed.sum()),
            **{k: float((v == target[missed]).mean()) for k, v in read_by.items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--images", type=int, default=300, help="held-out images")
    parser.add_argument("--out", type=Path, default=RESULTS / "colour-runs.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [diagnose(run, args.images) for run in args.runs]
    print(
        "| run | steps | bits/dim | edge MAE / scale | interior MAE | background MAE | "
        "do(shape) shown: mode / CF | do(hue) shown: mode / CF | do(shape) missed: number, "
        "read as asked by q(y | x) / posterior |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        shape, hue, missed = (
            r["do_shape_shown"],
            r["do_hue_shown"],
            r["do_shape_missed_read_as_asked"],
        )
        print(
            f"| {r['run']} | {r['steps']} | {r['bits_per_dim']:.3f} | "
            f"{r['edge']['mean_mae']:.1f} / {r['edge']['median_scale']:.1f} | "
            f"{r['interior']['mean_mae']:.2f} | {r['background']['mean_mae']:.2f} | "
            f"{shape['decoder_mode']:.3f} / {shape['counterfactual']:.3f} | "
            f"{hue['decoder_mode']:.3f} / {hue['counterfactual']:.3f} | "
            f"{missed['num_missed']}: {missed.get('classifier', math.nan):.2f} / "
            f"{missed.get('posterior', math.nan):.2f} |"
        )
    args.out.write_text(json.dumps({"command": sys.argv, "runs": rows}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
