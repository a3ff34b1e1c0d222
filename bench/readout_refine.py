"""The readout of trained colour-set models with and without refining the doubted images'
finalists (`SearchBudget.refine`, `model/readout.py`), side by side on the same held-out images
of bench/own_data.py's generator (its seeds: 1000 for the independent set, 2000 for the variant):
accuracy per factor, the shape confusions, seconds per image, and how often the readout warns
that its classifier reads other factors (`FactorPosterior.classifier_agrees`) on the misread
images and on the rightly read ones; the two arms interleaved per run.

Runs come from `bench/own_data.py --keep-runs DIR` (DIR/independent, DIR/variant). Run
`.venv/bin/python bench/readout_refine.py RUN:KIND [RUN:KIND ...] [--images 600] [--out PATH]`
(KIND independent or variant) [--dsprites N]; prints a markdown table and writes
bench/results/readout-refine.json (or --out). With --dsprites N it also reads N dSprites images
with the pretrained model and says what the doubt flag would say there (binary images never
raise it).
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

from causal_sprites.data.load import load_data
from causal_sprites.model.readout import AGREE_SHARE, DRAW_TOP
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


def dsprites_doubt(count: int) -> dict[str, Any]:
    """What the doubt flag would say on dSprites, where binary images never raise it: on `count`
    random images read by the pretrained model, how many leave the classifier's tuple under
    AGREE_SHARE of the posterior (its 8 best tuples), how many of those are read wrong, and
    which factors the classifier had wrong there."""
    model, data = load_run("pretrained"), load_data()
    rows = np.sort(np.random.default_rng(0).choice(len(data), count, replace=False))
    images, truth = data.images(rows), data.factors(rows)
    posterior = model.infer(images, top=DRAW_TOP)
    with torch.no_grad():
        pixels = torch.as_tensor(images, dtype=torch.float32)[:, None]
        classifier = torch.stack([out.argmax(-1) for out in model.model.classify(pixels)], 1)
    same = (posterior.classes == classifier.numpy()[:, None]).all(-1)
    would_warn = (posterior.probabilities * same).sum(1) < AGREE_SHARE
    wrong = (posterior.mode != truth).any(1)
    missed = classifier.numpy()[would_warn] != truth[would_warn]
    return {
        "images": count,
        "would_warn": int(would_warn.sum()),
        "would_warn_read_wrong": int((would_warn & wrong).sum()),
        "read_wrong": int(wrong.sum()),
        "classifier_wrong_factor_there": dict(
            zip(model.schema.names, missed.sum(0).tolist(), strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="RUN:KIND, KIND independent or variant")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/readout-refine.json")
    parser.add_argument(
        "--dsprites", type=int, default=0, help="also read N dSprites images (the flag's check)"
    )
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
    out: dict[str, Any] = {"machine": machine(load_before), "runs": rows}
    if args.dsprites:
        out["dsprites"] = dsprites_doubt(args.dsprites)
        print(f"dSprites (binary: never flagged), what the flag would say: {out['dsprites']}")
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
