"""The pendulum (issue 21): CausalVAE's scene rendered by `data/pendulum.py`, whose shadow noise
is recorded, so the true counterfactual image of any (image, do) is rendered exactly. The
`images` preset is trained with the true graph (pendulum_angle, light_angle -> shadow_length,
shadow_position) for --minutes CPU-minutes with one torch thread; on fresh held-out draws of the
same generator it reports:
- the NELBO (nats per image, bits per dimension) and the reconstruction's MAE (0-255) and PSNR;
- the readout from pixels per factor: median and mean absolute error of the posterior's mode in
  the factor's unit (beside q(y | x)'s proposal alone and the factor's range), and the spread's
  calibration (the share of truths within 2 spreads of the mode);
- counterfactuals under do(pendulum_angle = v) and do(light_angle = v) (v uniform over the
  range), with the factual labels given and read off the pixels: the counterfactual shadow
  factors against the truth's (absolute error in world units) and the images against the true
  renders (MAE, PSNR), beside the model's own reconstruction of the true image and the error of
  answering with the input unchanged;
- discovery from labels and from pixels (SHD to the truth's CPDAG, the tests used).

Run `.venv/bin/python bench/pendulum.py [--minutes 10] [--out PATH]`; prints a markdown table
and writes bench/results/pendulum.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import evaluate_nelbo, fit, training_images, training_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_data import per_image_mae, per_image_psnr

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = pendulum.FACTOR_NAMES
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
    model: CausalModel, data: Dataset, rows: np.ndarray, seed: int
) -> dict[str, Any]:
    """do() on each root against the true render, labels given and read off the pixels."""
    rng = np.random.default_rng(seed)
    images, factors = data.images(rows), data.factors(rows)
    noise = {key: value[rows] for key, value in data.extra.items() if key.startswith("noise_")}
    out: dict[str, Any] = {}
    for name in ROOTS:
        factor = data.schema.factor(name)
        values = rng.uniform(factor.low, factor.high, len(rows))
        true_factors, true_images = pendulum.true_counterfactual(
            factors, noise, {name: values}, data.schema
        )
        recon_of_truth = model.reconstruct(true_images, true_factors)
        for labels in ("given", "inferred"):
            start = time.perf_counter()
            result = model.counterfactual_query(
                images, factors if labels == "given" else None, do={name: values}, seed=seed
            )
            seconds = time.perf_counter() - start
            predicted = np.asarray(result.counterfactual, dtype=np.float64)
            mae = per_image_mae(result.images, true_images)
            recon_mae = per_image_mae(recon_of_truth, true_images)
            out[f"do({name}) {labels}"] = {
                "num_images": len(rows),
                "factor_abs_error": {
                    n: float(np.median(np.abs(predicted[:, k] - true_factors[:, k])))
                    for k, n in enumerate(NAMES)
                },
                "mae": float(mae.mean()),
                "psnr": float(per_image_psnr(result.images, true_images).mean()),
                "recon_of_truth_mae": float(recon_mae.mean()),
                "mae_ratio": float(mae.mean() / max(recon_mae.mean(), 1e-12)),
                "copy_mae": float(per_image_mae(images, true_images).mean()),
                "seconds_per_image": seconds / len(rows),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--num-samples", type=int, default=20_000)
    parser.add_argument("--shadow-noise", type=float, default=0.2)
    parser.add_argument("--test", type=int, default=256, help="held-out images scored")
    parser.add_argument(
        "--discovery-images", type=int, default=1000, help="held-out images for discovery"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pendulum-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "pendulum.json")
    parser.add_argument(
        "--rescore", action="store_true", help="score the run already in --workdir, no training"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    train_data = pendulum.generate(args.num_samples, shadow_noise=args.shadow_noise, seed=1)
    num_test = max(args.test, args.discovery_images)
    test_data = pendulum.generate(num_test, shadow_noise=args.shadow_noise, seed=2)
    preset = PRESETS["images"]
    config = replace(
        preset,
        graph=pendulum.EDGES,
        train=replace(preset.train, max_minutes=args.minutes, seed=args.seed),
    )
    run_dir = args.workdir / "run"
    start = time.perf_counter()
    if args.rescore:
        last = (run_dir / "metrics.jsonl").read_text().splitlines()[-1]
        record = {"step": json.loads(last)["step"]}
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        record = fit(run_dir, config, train_data, torch.device("cpu"), progress=False)
    wall = time.perf_counter() - start
    model = load_run(run_dir)
    rows = np.arange(args.test)
    device = torch.device("cpu")
    held_out = evaluate_nelbo(
        model.model, training_images(test_data, device), training_labels(test_data, device), rows
    )
    images, factors = test_data.images(rows), test_data.factors(rows)
    recon = model.reconstruct(images, factors)
    kinds = [f.kind for f in test_data.schema.factors]
    results: dict[str, Any] = {
        "benchmark": "pendulum",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_before": load_before,
        },
        "data": {
            "num_train": len(train_data),
            "num_test": args.test,
            "num_discovery_images": args.discovery_images,
            "shadow_noise": args.shadow_noise,
            "schema": test_data.schema.to_json(),
        },
        "training": {
            "minutes": args.minutes,
            "rescored": args.rescore,
            "steps": record["step"],
            "wall_seconds": wall,
            "regression_mae": held_out.get("regression_mae"),
        },
        "nelbo_nats": held_out["test_nelbo"],
        "bits_per_dim": bits_per_dim(held_out["test_nelbo"], int(np.prod(images.shape[1:]))),
        "recon_mae": float(per_image_mae(recon, images).mean()),
        "recon_psnr": float(per_image_psnr(recon, images).mean()),
        "readout": readout(model, images, factors),
        "counterfactuals": counterfactuals(model, test_data, rows[:128], args.seed),
        "discovery_labels": discover(
            train_data.factors(slice(None))[:2000], pendulum.EDGES, names=NAMES, kinds=kinds
        ),
        "discovery_pixels": discover_from_images(
            model, test_data.images(np.arange(args.discovery_images)), pendulum.EDGES
        ),
    }
    results["machine"]["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """The headline numbers as a markdown table."""
    lines = [
        f"steps {results['training']['steps']}, NELBO {results['nelbo_nats']:.1f} nats "
        f"({results['bits_per_dim']:.3f} bits/dim), recon MAE {results['recon_mae']:.2f}, "
        f"PSNR {results['recon_psnr']:.1f} dB",
        "",
        "| factor | range | readout median error | proposal's | median spread | in 2 spreads |",
        "|---|---|---|---|---|---|",
    ]
    for name in NAMES:
        r = results["readout"][name]
        lines.append(
            f"| {name} | {r['range'][0]:g}..{r['range'][1]:g} | {r['median_abs_error']:.3f} | "
            f"{r['proposal_median_abs_error']:.3f} | {r['median_spread']:.3f} | "
            f"{r['within_2_spreads']:.2f} |"
        )
    lines += ["", "| query | length err | position err | MAE | PSNR | ratio | copy MAE |"]
    lines.append("|---|---|---|---|---|---|---|")
    for query, r in results["counterfactuals"].items():
        errors = r["factor_abs_error"]
        lines.append(
            f"| {query} | {errors['shadow_length']:.3f} | {errors['shadow_position']:.3f} | "
            f"{r['mae']:.2f} | {r['psnr']:.1f} | {r['mae_ratio']:.2f} | {r['copy_mae']:.2f} |"
        )
    lines.append("")
    for key in ("discovery_labels", "discovery_pixels"):
        lines.append(f"{key}: SHD {results[key]['shd']}, edges {results[key]['edges']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
