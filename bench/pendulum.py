"""The pendulum (issue 21): CausalVAE's scene rendered by `data/pendulum.py`, whose shadow noise
is recorded, so the true counterfactual image of any (image, do) is rendered exactly. The
`images` preset is trained for --minutes CPU-minutes with one torch thread, twice side by side
(one process each): with the true graph (pendulum_angle, light_angle -> shadow_length,
shadow_position) and ignoring it (every factor a root). On fresh held-out draws of the same
generator it reports per model:
- the NELBO (nats per image, bits per dimension) and the reconstruction's MAE (0-255) and PSNR;
- the readout from pixels per factor: median and mean absolute error of the posterior's mode in
  the factor's unit (beside q(y | x)'s proposal alone and the factor's range), and the spread's
  calibration (the share of truths within 2 spreads of the mode);
- counterfactuals under do(pendulum_angle = v) and do(light_angle = v) (v uniform over the
  range) on --counterfactuals images with the factual labels given (and the first --inferred
  read off the pixels): the counterfactual shadow factors against the truth's (absolute error
  in world units), effectiveness (the model's readout of the intervened angle on its answer
  against v), the images against the true renders (MAE, PSNR) beside the model's own
  reconstruction of the true image and the error of answering with the input unchanged; where
  the error comes from (the answer with every factor set to its true counterfactual value, and
  the decoder's mean there with the z of the true image, of the factual one and z = 0); and
  do(every factor = its observed value), which must return the input;
- discovery from the pixels (SHD to the truth's CPDAG); once, discovery from labels.

Run `.venv/bin/python bench/pendulum.py [--minutes 10] [--out PATH]` (two processes: give it
both cores); prints markdown tables and writes bench/results/pendulum.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data import pendulum
from causal_sprites.data.dataset import Dataset
from causal_sprites.discovery import discover, discover_from_images
from causal_sprites.model.pixels import bits_per_dim
from causal_sprites.runs import astray_warning, read_metrics
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import evaluate_nelbo, fit, training_images, training_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_data import add_recipe_flags, per_image_mae, per_image_psnr, recipe_overrides
from side_by_side import machine, side_by_side

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = pendulum.FACTOR_NAMES
#: The do() values' own random stream: a bare `--seed 2` drew the held-out set's own angles
#: (`pendulum.generate(seed=2)` draws them first), so do(pendulum_angle) asked for the observed
#: angle and scored a ratio of 0.
DO_STREAM = 7
ROOTS = ("pendulum_angle", "light_angle")


def readout(model: CausalModel, images: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The posterior's mode per factor against the truth (errors in the factor's unit), q(y | x)'s
    proposal alone beside it, and the spread's calibration."""
    from causal_sprites.model.refine import propose
    from causal_sprites.scm.inputs import as_images

    start = time.perf_counter()
    posterior = model.infer(images, top=1)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = as_images(images, model.schema)
        proposal, _ = propose(model.model, x, model.model.features(x))
    out: dict[str, Any] = {"num_images": len(images), "seconds_per_image": seconds / len(images)}
    for k, name in enumerate(NAMES):
        factor = model.schema.factor(name)
        error = np.abs(posterior.mode[:, k] - truth[:, k])
        spread = posterior.spread[:, k]
        out[name] = {
            "range": [factor.low, factor.high],
            "median_abs_error": float(np.median(error)),
            "mean_abs_error": float(error.mean()),
            "proposal_median_abs_error": float(
                np.median(np.abs(proposal[:, k].numpy() - truth[:, k]))
            ),
            "median_spread": float(np.median(spread)),
            "within_2_spreads": float((error <= 2 * spread).mean()),
        }
    out["out_of_distribution"] = int(model.out_of_distribution(posterior).sum())
    return out


def counterfactuals(
    model: CausalModel, data: Dataset, rows: np.ndarray, num_inferred: int, seed: int
) -> dict[str, Any]:
    """do() on each root against the true render, with the labels given (all `rows`) and read
    off the pixels (the first `num_inferred`); effectiveness (the run's readout of the
    intervened factor on its answer against the value asked for); do(every factor = its
    observed value) returning the input."""
    rng = np.random.default_rng((DO_STREAM, seed))
    images, factors = data.images(rows), data.factors(rows)
    noise = {key: value[rows] for key, value in data.extra.items() if key.startswith("noise_")}
    out: dict[str, Any] = {}
    for name in ROOTS:
        factor = data.schema.factor(name)
        column = NAMES.index(name)
        values = rng.uniform(factor.low, factor.high, len(rows))
        true_factors, true_images = pendulum.true_counterfactual(
            factors, noise, {name: values}, data.schema
        )
        recon_of_truth = model.reconstruct(true_images, true_factors)
        out[f"do({name}) decoder"] = where_the_error_is(
            model, images, factors, true_images, true_factors, seed
        )
        for labels, count in (("given", len(rows)), ("inferred", num_inferred)):
            start = time.perf_counter()
            result = model.counterfactual_query(
                images[:count],
                factors[:count] if labels == "given" else None,
                do={name: values[:count]},
                seed=seed,
            )
            seconds = time.perf_counter() - start
            predicted = np.asarray(result.counterfactual, dtype=np.float64)
            truth = true_images[:count]
            mae = per_image_mae(result.images, truth)
            recon_mae = per_image_mae(recon_of_truth[:count], truth)
            read = model.infer(result.images, top=1).mode[:, column]
            out[f"do({name}) {labels}"] = {
                "num_images": count,
                "factor_abs_error": {
                    n: float(np.median(np.abs(predicted[:, k] - true_factors[:count, k])))
                    for k, n in enumerate(NAMES)
                },
                "factor_mean_abs_error": {
                    n: float(np.mean(np.abs(predicted[:, k] - true_factors[:count, k])))
                    for k, n in enumerate(NAMES)
                },
                "effectiveness_mae": float(np.abs(read - values[:count]).mean()),
                "mae": float(mae.mean()),
                "psnr": float(per_image_psnr(result.images, truth).mean()),
                "recon_of_truth_mae": float(recon_mae.mean()),
                "mae_ratio": float(mae.mean() / max(recon_mae.mean(), 1e-12)),
                "copy_mae": float(per_image_mae(images[:count], truth).mean()),
                "seconds_per_image": seconds / count,
            }
        # Side by side: each pixel's noise drawn, as every answer was before the median.
        drawn = model.counterfactual_query(
            images, factors, do={name: values}, seed=seed, pixel_noise="draw"
        ).images
        redrawn_mae = per_image_mae(recon_of_truth, true_images).mean()
        out[f"do({name}) given"]["drawn_pixel_noise_mae_ratio"] = float(
            per_image_mae(drawn, true_images).mean() / max(redrawn_mae, 1e-12)
        )
    observed = model.counterfactual_query(
        images, factors, do={n: factors[:, k] for k, n in enumerate(NAMES)}, seed=seed
    )
    out["do(observed) given"] = {
        "num_images": len(rows),
        "returned_exactly": float((observed.images == images).all(axis=(1, 2, 3)).mean()),
    }
    return out


def where_the_error_is(
    model: CausalModel,
    images: np.ndarray,
    factors: np.ndarray,
    true_images: np.ndarray,
    true_factors: np.ndarray,
    seed: int,
) -> dict[str, float]:
    """Where a counterfactual's error comes from: the MAE against the true images of the model's
    answer with every factor set to the true counterfactual values (perfect mechanisms), and of
    its decoder's mean at those values with the z of the true image, of the factual image and
    z = 0: how much of the error is z's, abducted from an image with other factors."""
    everything = {n: true_factors[:, k] for k, n in enumerate(NAMES)}
    perfect = model.counterfactual_query(images, factors, do=everything, seed=seed).images
    z_options = {
        "z_of_truth": model.encode(true_images, true_factors),
        "z_of_factual": model.encode(images, factors),
    }
    z_options["z_zero"] = torch.zeros_like(z_options["z_of_truth"])
    return {
        "true_factors_mae": float(per_image_mae(perfect, true_images).mean()),
        **{
            f"decoder_mean_{key}_mae": float(
                per_image_mae(model.decode(true_factors, z), true_images).mean()
            )
            for key, z in z_options.items()
        },
    }


def datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """The training set and fresh held-out draws of the same generator."""
    train_data = pendulum.generate(args.num_samples, shadow_noise=args.shadow_noise, seed=1)
    num_test = max(args.test, args.counterfactuals, args.discovery_images)
    return train_data, pendulum.generate(num_test, shadow_noise=args.shadow_noise, seed=2)


def train_and_score(name: str, graph: tuple[tuple[str, str], ...], args: Any) -> dict[str, Any]:
    """Train the `images` preset with `graph` for --minutes on one thread (or rescore the run in
    --workdir) and score it on the held-out draws."""
    torch.set_num_threads(1)
    train_data, test_data = datasets(args)
    preset = PRESETS["images"]
    train = replace(preset.train, max_minutes=args.minutes, seed=args.seed)
    train = replace(train, **recipe_overrides(args))
    config = replace(preset, graph=graph, train=train)
    run_dir = args.workdir / name
    start = time.perf_counter()
    if args.rescore:
        record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        record = fit(run_dir, config, train_data, torch.device("cpu"), progress=False)
    wall = time.perf_counter() - start
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    model = load_run(run_dir)
    rows = np.arange(args.test)
    device = torch.device("cpu")
    held_out = evaluate_nelbo(
        model.model, training_images(test_data, device), training_labels(test_data, device), rows
    )
    images, factors = test_data.images(rows), test_data.factors(rows)
    recon = model.reconstruct(images, factors)
    start = time.perf_counter()
    scored = {
        "graph": [list(edge) for edge in graph],
        "training": {
            "minutes": args.minutes,
            "rescored": args.rescore,
            "steps": record["step"],
            "grad_clip": config.train.grad_clip,
            "clipped_steps": record.get("clipped_steps", 0),
            "wall_seconds": wall,
            "mechanism_nll": first.get("mechanism_nll"),
            "mechanism_fit_seconds": first.get("elapsed") if "mechanism_nll" in first else None,
            "regression_mae": held_out.get("regression_mae"),
            "astray_warning": astray_warning(read_metrics(run_dir)),
        },
        "nelbo_nats": held_out["test_nelbo"],
        "bits_per_dim": bits_per_dim(held_out["test_nelbo"], int(np.prod(images.shape[1:]))),
        "recon_mae": float(per_image_mae(recon, images).mean()),
        "recon_psnr": float(per_image_psnr(recon, images).mean()),
        "readout": readout(model, images, factors),
        "counterfactuals": counterfactuals(
            model, test_data, np.arange(args.counterfactuals), args.inferred, args.seed
        ),
        "discovery_pixels": discover_from_images(
            model, test_data.images(np.arange(args.discovery_images)), pendulum.EDGES
        ),
    }
    scored["scoring_seconds"] = time.perf_counter() - start
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--num-samples", type=int, default=20_000)
    parser.add_argument("--shadow-noise", type=float, default=0.2)
    parser.add_argument("--test", type=int, default=256, help="held-out images for the readout")
    parser.add_argument("--counterfactuals", type=int, default=500, help="images per do()")
    parser.add_argument("--inferred", type=int, default=128, help="of those, read off pixels")
    parser.add_argument(
        "--discovery-images", type=int, default=1000, help="held-out images for discovery"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_recipe_flags(parser)
    parser.add_argument(
        "--only", nargs="+", choices=("graph", "no_graph"), help="models to train (default: both)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pendulum-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "pendulum.json")
    parser.add_argument(
        "--rescore", action="store_true", help="score the runs already in --workdir, no training"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    models = {"graph": pendulum.EDGES, "no_graph": ()}
    models = {name: models[name] for name in args.only or models}
    scored = side_by_side(train_and_score, models, args)
    train_data, test_data = datasets(args)
    kinds = [f.kind for f in test_data.schema.factors]
    results: dict[str, Any] = {
        "benchmark": "pendulum",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine(load_before),
        "data": {
            "num_train": len(train_data),
            "num_test": args.test,
            "num_counterfactuals": args.counterfactuals,
            "num_discovery_images": args.discovery_images,
            "shadow_noise": args.shadow_noise,
            "schema": test_data.schema.to_json(),
        },
        "discovery_labels": discover(
            train_data.factors(slice(None))[:2000], pendulum.EDGES, names=NAMES, kinds=kinds
        ),
        "models": scored,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """The headline numbers of both models as markdown tables."""
    lines = [f"discovery from labels: SHD {results['discovery_labels']['shd']}"]
    for model, r in results["models"].items():
        lines += [
            "",
            f"## {model}: steps {r['training']['steps']}, NELBO {r['nelbo_nats']:.1f} nats "
            f"({r['bits_per_dim']:.3f} bits/dim), recon MAE {r['recon_mae']:.2f}, "
            f"PSNR {r['recon_psnr']:.1f} dB; discovery from pixels: SHD "
            f"{r['discovery_pixels']['shd']}",
            "",
            "| factor | range | readout mean error | median | proposal's median | in 2 spreads |",
            "|---|---|---|---|---|---|",
        ]
        for name in NAMES:
            f = r["readout"][name]
            lines.append(
                f"| {name} | {f['range'][0]:g}..{f['range'][1]:g} | {f['mean_abs_error']:.3f} | "
                f"{f['median_abs_error']:.3f} | {f['proposal_median_abs_error']:.3f} | "
                f"{f['within_2_spreads']:.2f} |"
            )
        lines += [
            "",
            "| query | images | length err | position err | effectiveness | MAE | PSNR | ratio "
            "| copy MAE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for query, q in r["counterfactuals"].items():
            if query.endswith("decoder"):
                lines.append(f"| {query} | " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
                continue
            if "mae" not in q:
                lines.append(f"| {query} | {q['num_images']} | returned exactly: "
                             f"{q['returned_exactly']:.3f} |")  # fmt: skip
                continue
            errors = q["factor_mean_abs_error"]
            lines.append(
                f"| {query} | {q['num_images']} | {errors['shadow_length']:.3f} | "
                f"{errors['shadow_position']:.3f} | {q['effectiveness_mae']:.3f} | "
                f"{q['mae']:.2f} | {q['psnr']:.1f} | {q['mae_ratio']:.2f} | {q['copy_mae']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
