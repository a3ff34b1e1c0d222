"""Reading factors off pixels: the classifier's argmax against the posterior p(y | x) (its mode),
side by side in one run, on held-out images of a run, against the targets of the pixels issue.

Accuracy per factor, exact and image-equivalent (the predicted factors, swapped into the true
tuple, draw the same dSprites image: IoU >= 0.98); hearts' orientation exact (0 and 2 pi as one);
counterfactuals of unlabelled images (labels inferred) against the true image, beside the same
queries with labels; discovery from the pixels alone (all five factors) on dSprites; how close
symmetric orientations' images really are; out-of-distribution flags; speed on this machine.

Run `.venv/bin/python bench/inference.py [--run pretrained] [--num-images 4096] [--demo-run DIR
--demo-images 512]`; writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_sprites.batches import split_rows
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS, SIZES, classes_to_index
from causal_sprites.discovery import discover, discover_from_images
from causal_sprites.metrics import iou, readout_accuracy
from causal_sprites.scm.queries import CausalModel, load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def argmax_labels(model: CausalModel, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.as_tensor(images).float()[:, None]
        return np.stack([lg.argmax(-1).numpy() for lg in model.model.classify(x)], -1)


def read_off(model: CausalModel, data: DSprites, num_images: int, seed: int) -> dict[str, Any]:
    """Argmax and posterior side by side on held-out images of the run's split."""
    _, test_rows = split_rows(data, model.config)
    rows = np.sort(np.random.default_rng(seed).permutation(test_rows)[:num_images])
    images, truth = data.images(rows), data.factors(rows)
    start = time.perf_counter()
    argmax = argmax_labels(model, images)
    argmax_seconds = time.perf_counter() - start
    start = time.perf_counter()
    posterior = model.infer(images, top=5)
    seconds = time.perf_counter() - start
    flagged = model.out_of_distribution(posterior)
    return {
        "num_images": len(rows),
        "argmax": {
            **readout_accuracy(argmax, truth, images, model.schema),
            "seconds": argmax_seconds,
        },
        "posterior": {
            **readout_accuracy(posterior.mode, truth, images, model.schema),
            "seconds": seconds,
            "images_per_s": len(rows) / seconds,
            "tuples_scored_per_image": float(posterior.num_scored.mean()),
            "mode_probability_median": float(np.median(posterior.probabilities[:, 0])),
            "flagged_out_of_distribution": float(flagged.mean()),
        },
    }


def counterfactuals(model: CausalModel, data: DSprites, num: int, seed: int) -> dict[str, Any]:
    """Random do() on one of the five factors per query: IoU against the true dSprites image,
    labels inferred from the pixels against the same queries with labels given."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data), num, replace=False)
    images, truth = data.images(rows), data.factors(rows)
    factor = rng.integers(0, len(FACTORS), num)
    value = np.array([rng.integers(0, SIZES[f]) for f in factor])
    target = truth.copy()
    target[np.arange(num), factor] = value
    true_images = data.images(classes_to_index(target))
    out: dict[str, Any] = {"num_queries": num}
    refused = model.out_of_distribution(model.infer(images))
    for name, labels in (("labels_given", truth), ("labels_inferred", None)):
        answers = np.zeros_like(images)
        start = time.perf_counter()
        for f in range(len(FACTORS)):
            chosen = (factor == f) & (~refused if labels is None else True)
            do = {FACTORS[f]: value[chosen]}
            y = None if labels is None else labels[chosen]
            answers[chosen] = model.counterfactual(images[chosen], y, do, seed=seed)
        scores = iou(answers, true_images)  # a refused query scores 0 (an empty answer)
        out[name] = {
            "iou_mean": float(scores.mean()),
            "iou_at_least_0.98": float((scores >= 0.98).mean()),
            "refused": int(refused.sum()) if labels is None else 0,
            "seconds": time.perf_counter() - start,
        }
    out["gap"] = out["labels_given"]["iou_mean"] - out["labels_inferred"]["iou_mean"]
    return out


def discovery(model: CausalModel, data: DSprites, num: int, seed: int) -> dict[str, Any]:
    """PC over all five factors read off the pixels of plain dSprites: posterior draws (ours)
    and the classifier's argmax (before), one subsample."""
    rows = np.sort(np.random.default_rng(seed).choice(len(data), num, replace=False))
    images = data.images(rows)
    ours = discover_from_images(model, images, seed=seed)
    before = discover(argmax_labels(model, images), seed=seed, names=FACTORS)
    return {
        "num_images": num,
        "posterior_edges": ours["edges"],
        "argmax_edges": before["edges"],
        "posterior_seconds": ours["seconds"],
    }


def symmetric_images(data: DSprites) -> dict[str, Any]:
    """How alike the images of nearly equivalent orientations really are: mean IoU of each
    sprite with its quarter-turn (square) / half-turn (ellipse) neighbours on the grid."""
    out = {}
    for shape, name, steps in ((0, "square", (9, 10)), (1, "ellipse", (19, 20))):
        scores = {}
        for step in steps:
            k = np.arange(0, 40 - step)
            base = [
                data.index(shape=shape, scale=5, orientation=int(o), posX=16, posY=16) for o in k
            ]
            turned = [
                data.index(shape=shape, scale=5, orientation=int(o + step), posX=16, posY=16)
                for o in k
            ]
            scores[f"+{step}"] = float(iou(data.images(base), data.images(turned)).mean())
        out[name] = scores
    zero = [
        data.index(shape=s, scale=5, orientation=o, posX=16, posY=16)
        for s in range(3)
        for o in (0, 39)
    ]
    pictures = data.images(zero)
    out["0_vs_2pi_identical"] = bool(
        all((pictures[2 * s] == pictures[2 * s + 1]).all() for s in range(3))
    )
    return out


def out_of_distribution(model: CausalModel, data: DSprites) -> dict[str, Any]:
    a, b = (
        data.images([data.index(shape=0, scale=2, orientation=0, posX=5, posY=5)]),
        data.images([data.index(shape=2, scale=3, orientation=5, posX=25, posY=25)]),
    )
    noise = (np.random.default_rng(0).random((64, 64)) < 0.5).astype(np.uint8)
    odd = {
        "blank": np.zeros((64, 64), np.uint8),
        "all_white": np.ones((64, 64), np.uint8),
        "noise": noise,
        "two_sprites": np.maximum(a[0], b[0]),
    }
    posterior = model.infer(np.stack(list(odd.values())))
    flagged = model.out_of_distribution(posterior)
    return {
        name: {"log_likelihood": float(ll), "flagged": bool(f)}
        for name, ll, f in zip(odd, posterior.log_likelihood, flagged, strict=True)
    } | {"likelihood_range": model.likelihood_range}


def speed(model: CausalModel, data: DSprites, seed: int) -> dict[str, Any]:
    """One image at a time (median of 50) and batches of 1,024."""
    rows = np.random.default_rng(seed).choice(len(data), 1024, replace=False)
    images = data.images(rows)
    single = []
    for k in range(50):
        start = time.perf_counter()
        model.infer(images[k : k + 1])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.infer(images)
    batched = time.perf_counter() - start
    return {
        "single_image_ms_median": 1e3 * float(np.median(single)),
        "single_image_ms_max": 1e3 * float(np.max(single)),
        "batched_images_per_s": len(images) / batched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="pretrained")
    parser.add_argument("--num-images", type=int, default=4096)
    parser.add_argument("--num-queries", type=int, default=500)
    parser.add_argument("--discovery-images", type=int, default=5000)
    parser.add_argument("--demo-run", type=Path)
    parser.add_argument("--demo-images", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    parser.add_argument(
        "--parts",
        default="read_off,counterfactual,discovery,symmetric_orientations,out_of_distribution,speed",
        help="Comma-separated parts to run (e.g. speed alone on a quiet machine).",
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model = load_run(args.run)
    data = DSprites.load(model.config.data)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "run": args.run,
    }
    for name, part in (
        ("read_off", lambda: read_off(model, data, args.num_images, args.seed)),
        ("counterfactual", lambda: counterfactuals(model, data, args.num_queries, args.seed)),
        ("discovery", lambda: discovery(model, data, args.discovery_images, args.seed)),
        ("symmetric_orientations", lambda: symmetric_images(data)),
        ("out_of_distribution", lambda: out_of_distribution(model, data)),
        ("speed", lambda: speed(model, data, args.seed)),
    ):
        if name not in args.parts.split(","):
            continue
        result[name] = part()
        print(name, json.dumps(result[name])[:600], flush=True)
    if args.demo_run is not None:
        demo = load_run(args.demo_run)
        result["demo"] = {
            "run": str(args.demo_run),
            "read_off": read_off(demo, data, args.demo_images, args.seed),
            "discovery": discovery(demo, data, args.demo_images * 4, args.seed),
        }
        print("demo", json.dumps(result["demo"])[:800], flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
