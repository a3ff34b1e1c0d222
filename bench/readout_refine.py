"""The readout of trained colour-set models with and without refining the doubted images'
finalists (`SearchBudget.refine`, `model/readout.py`), side by side on the same held-out images
of bench/own_data.py's generator (its seeds: 1000 for the independent set, 2000 for the variant):
accuracy per factor, the shape confusions, seconds per image, and how often the readout warns
that its classifier reads other factors (`FactorPosterior.classifier_agrees`) on the misread
images and on the rightly read ones; the two arms interleaved per run.

Runs come from `bench/own_data.py --keep-runs DIR` (DIR/independent, DIR/variant). Run
`.venv/bin/python bench/readout_refine.py RUN:KIND [RUN:KIND ...] [--images 600] [--out PATH]`
(KIND independent or variant); prints a markdown table and writes bench/results/readout-refine.json
(or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_sprites.scm.queries import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
import own_data  # the colour set's generator and readout metrics
from side_by_side import machine

ROOT = Path(__file__).resolve().parents[1]


def held_out(kind: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """own_data's held-out images (B, 48, 80, 3) and classes (B, 4) of one set."""
    if kind == "independent":
        classes, grey = own_data.independent_draws(count, 1000)
    else:
        classes, grey = own_data.variant_draws(count, 2000)[:2]
    return own_data.render(classes, grey), classes


def compare(run: Path, kind: str, count: int) -> dict[str, Any]:
    """Both arms' readout of one run (off first, then on)."""
    model = load_run(run)
    images, classes = held_out(kind, count)
    result: dict[str, Any] = {"run": str(run), "kind": kind, "images": count}
    for refine in (False, True):
        model.search_budget = dataclasses.replace(model.search_budget, refine=refine)
        scores = own_data.readout(model, images, classes)
        scores.pop("mode")
        result["refined" if refine else "amortised"] = scores
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN:KIND, KIND independent or variant")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/readout-refine.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    for item in args.runs:
        run, _, kind = item.rpartition(":")
        if kind not in ("independent", "variant") or not Path(run, "config.json").exists():
            parser.error(f"{item}: give RUN:KIND, RUN a trained run, KIND independent or variant")
        rows.append(compare(Path(run), kind, args.images))
    print(
        "| run | set | readout worst (amortised -> refined) | shape confusions | s/image "
        "| refined: warned of misread / of right |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        before, after = row["amortised"], row["refined"]
        print(
            f"| {row['run']} | {row['kind']} | {before['accuracy_min']:.4f} -> "
            f"{after['accuracy_min']:.4f} | {before['confusions']['shape']} -> "
            f"{after['confusions']['shape']} | {before['seconds_per_image']:.3f} -> "
            f"{after['seconds_per_image']:.3f} | {after['doubted']['misread']} / "
            f"{after['doubted']['read_right']:.4f} |"
        )
    out = {"machine": machine(load_before), "runs": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
