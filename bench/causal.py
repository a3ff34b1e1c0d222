"""Causal benchmark: every soundness metric for the pretrained model on dSprites and for a model
trained on each example variant, against targets a perfect model meets, plus causal discovery
from labels and from the pixels alone (SHD, time).

Counterfactual soundness (`evaluate_counterfactuals`: ground-truth IoU, effectiveness,
preservation, composition, reversibility, and the TV of counterfactual factor distributions
against the truth's sampling floor), counterfactual-distribution speed, distributions
(`evaluate_distributions`: TV of P(target | do(set = v)) and P(target | set = v) from the SCM and
through the oracle), discovery (`discover_file` on each variant with its truth and on dSprites;
`discover_from_images` from the pixels alone, with each model) and discovery's run time on
100,000 samples of a variant. The variant models train for a short budget (--minutes, default 3)
on the CPU; the pretrained run trained far longer (README).

Run `.venv/bin/python bench/causal.py [--minutes 3] [--quick] [--pixel-images N]
[--pretrained-only]`; prints a summary and writes bench/results/causal.json (or causal-quick.json;
with --pretrained-only, the pretrained model's part alone, after a retrain: causal-pretrained.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.variants import VariantSpec, load_spec, read_variant, sample_variant
from causal_sprites.discovery import discover_file, discover_from_images
from causal_sprites.evaluation import evaluate_counterfactuals, evaluate_distributions
from causal_sprites.oracle import load_oracle
from causal_sprites.runtime import choose_device
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VARIANTS = ROOT / "examples" / "variants"
#: The targets: (metric, bound, direction); TVs and gaps at most, the rest at least. Each is one
#: a perfect model meets. Ground-truth IoU and reversibility over all factors are not: on a
#: variant whose intervened factor has stochastic descendants the recorded noise is not in the
#: image (see `evaluate_counterfactuals`), so they are held to 0.98 where the counterfactual is
#: identified, to within 0.02 of the perfect model's ceiling elsewhere, and the distribution of
#: counterfactual factors to within 0.02 TV of the truth's own sampling floor, factor by factor.
TARGETS: tuple[tuple[str, float, str], ...] = (
    ("counterfactual_tv_above_floor", 0.02, "<="),
    ("pixel_discovery_shd", 0, "<="),
    ("ground_truth_iou_identified", 0.98, ">="),
    ("ground_truth_iou_below_ceiling", 0.02, "<="),
    ("effectiveness", 0.98, ">="),
    ("preservation", 0.98, ">="),
    ("composition_iou_10", 0.99, ">="),
    ("reversibility_iou_identified", 0.98, ">="),
    ("reversibility_iou_below_ceiling", 0.02, "<="),
    ("tv_intervention", 0.02, "<="),
    ("tv_condition", 0.02, "<="),
    ("tv_intervention_oracle", 0.02, "<="),
    ("tv_condition_oracle", 0.02, "<="),
    ("shd", 0, "<="),
)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def check_targets(scores: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured value and whether it is met (None when not measured)."""
    table = {}
    for name, bound, direction in TARGETS:
        value = scores.get(name)
        met = None if value is None else (value >= bound if direction == ">=" else value <= bound)
        table[name] = {"value": value, "target": f"{direction} {bound}", "met": met}
        if name.endswith("_oracle"):  # sample-based: a perfect model scores about this much
            table[name]["sampling_floor"] = scores.get("sampling_floor")
    return table


def score_model(
    model: CausalModel,
    data: DSprites,
    oracle: Any,
    spec: VariantSpec | None,
    variant: Any,
    discovery: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Counterfactual soundness, distributions and discovery of one model, with the targets."""
    start = time.perf_counter()
    soundness = evaluate_counterfactuals(model, data, oracle, variant, args.num_images)
    soundness_seconds = time.perf_counter() - start
    start = time.perf_counter()
    distributions = evaluate_distributions(model, oracle, spec, data, args.num_samples)
    distributions_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rows = np.sort(np.random.default_rng(0).choice(len(data), args.pixel_images, replace=False))
    from_pixels = discover_from_images(model, data.images(rows), spec or ())
    pixel_seconds = time.perf_counter() - start
    summary = {
        **{k: v for k, v in soundness.items() if k != "per_factor"},
        **{k: v for k, v in distributions.items() if k != "entries"},
        "shd": discovery["shd"],
        "pixel_discovery_shd": from_pixels["shd"],
        "counterfactual_tv_above_floor": max(
            f["counterfactual_tv"] - f["counterfactual_tv_floor"]
            for f in soundness["per_factor"].values()
        ),
    }
    for name in ("ground_truth_iou", "reversibility_iou"):
        summary[f"{name}_below_ceiling"] = summary[f"{name}_ceiling"] - summary[name]
    return {
        "summary": summary,
        "targets": check_targets(summary),
        "counterfactual": soundness,
        "counterfactual_seconds": soundness_seconds,
        "distributions": distributions,
        "distributions_seconds": distributions_seconds,
        "discovery": discovery,
        "pixel_discovery": {
            **discovery_record(from_pixels, pixel_seconds),
            "labels": from_pixels["labels"],
            "factors": from_pixels["factors"],
        },
        "distribution_speed": distribution_speed(model, data, spec),
        "load_average": load(),
    }


def distribution_speed(model: CausalModel, data: DSprites, spec: VariantSpec | None) -> dict:
    """Seconds per query of counterfactual distributions, 256 queries of do(shape) with 2,000
    noise draws each: the factor graph alone, and the whole API call (images and pixel map)."""
    rows = np.random.default_rng(1).choice(len(data), 256, replace=False)
    factual = torch.as_tensor(data.factors(rows))
    do = {"shape": (factual[:, 0] + 1) % 3}
    graph = model.factor_graph
    start = time.perf_counter()
    graph.counterfactuals(factual, do, 2000, torch.Generator().manual_seed(0))
    noise_seconds = time.perf_counter() - start
    start = time.perf_counter()
    spread = model.counterfactual_distribution(data.images(rows), factual.numpy(), do, 2000)
    api_seconds = time.perf_counter() - start
    return {
        "num_queries": 256,
        "num_noise_samples": 2000,
        "ms_per_query_noise": 1e3 * noise_seconds / 256,
        "ms_per_query_api": 1e3 * api_seconds / 256,
        "mean_tuples_per_query": float(np.mean([len(c) for c in spread.classes])),
        "graph": spec.graph_string() if spec is not None else "",
    }


def discovery_record(result: dict[str, Any], wall: float) -> dict[str, Any]:
    """The parts of a discovery result worth keeping (the test table included)."""
    keep = ("edges", "truth_edges", "shd", "num_samples", "alpha", "test", "tests", "seconds")
    return {**{k: result[k] for k in keep if k in result}, "wall_seconds_with_loading": wall}


def run_dsprites(oracle: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The pretrained model on the default dSprites data; discovery there must find no edge."""
    start = time.perf_counter()
    found = discover_file(None, ())
    discovery = discovery_record(found, time.perf_counter() - start)
    data = DSprites.load()
    model = load_run("pretrained")
    record = score_model(model, data, oracle, None, None, discovery, args)
    minutes = model.config.train.max_minutes
    return {"model": f"pretrained ({minutes:g} minutes of training)", "data": "dSprites", **record}


def run_variant(
    path: Path, oracle: Any, device: torch.device, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Sample a variant, train the default preset over its graph for the budget, score it."""
    spec = load_spec(path)
    data_path = sample_variant(spec, work / f"{spec.name}.npz")
    start = time.perf_counter()
    found = discover_file(data_path, spec)
    discovery = discovery_record(found, time.perf_counter() - start)
    data = DSprites.load(data_path)
    base = PRESETS["default"]
    config = replace(
        base,
        train=replace(base.train, max_minutes=args.minutes),
        data=str(data_path),
        graph=tuple(spec.edges),
    )
    run_dir = work / f"run-{spec.name}"
    start = time.perf_counter()
    final = fit(run_dir, config, data, device, progress=False)
    train_seconds = time.perf_counter() - start
    model = load_run(run_dir, device)
    record = score_model(model, data, oracle, spec, read_variant(data_path), discovery, args)
    return {
        "model": f"default preset, trained {args.minutes} minutes (a short budget)",
        "data": f"variant {spec.name} ({spec.num_samples} samples, seed {spec.seed})",
        "spec": str(path.relative_to(ROOT)),
        "edges": [list(edge) for edge in spec.edges],
        "training": {
            "steps": int(final["step"]),
            "train_seconds": float(final["elapsed"]),
            "wall_seconds": train_seconds,
            "test_nelbo": final.get("test_nelbo"),
            "classifier_accuracy": final.get("classifier_accuracy"),
        },
        **record,
    }


def discovery_timing(path: Path, work: Path, num_samples: int) -> dict[str, Any]:
    """Sample `num_samples` rows of a variant and time discovery on them."""
    spec = replace(load_spec(path), num_samples=num_samples)
    start = time.perf_counter()
    data_path = sample_variant(spec, work / f"{spec.name}-{num_samples}.npz")
    sample_seconds = time.perf_counter() - start
    start = time.perf_counter()
    found = discover_file(data_path, spec)
    wall = time.perf_counter() - start
    return {
        "variant": spec.name,
        "num_samples": num_samples,
        "sample_seconds": sample_seconds,
        "pc_seconds": found["seconds"],
        "wall_seconds_with_loading": wall,
        "shd": found["shd"],
        "edges": found["edges"],
        "load_average": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="Training budget per variant.")
    parser.add_argument("--quick", action="store_true", help="0.5 minutes and small samples.")
    parser.add_argument("--num-images", type=int, default=None, help="Counterfactuals per factor.")
    parser.add_argument("--num-samples", type=int, default=None, help="Images per distribution.")
    parser.add_argument("--timing-samples", type=int, default=100_000)
    parser.add_argument(
        "--pixel-images", type=int, default=5000, help="Images read for discovery from pixels."
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--pretrained-only", action="store_true", help="Score the pretrained model alone."
    )
    args = parser.parse_args()
    if args.quick:
        args.minutes = 0.5
    args.num_images = args.num_images or (32 if args.quick else 256)
    args.num_samples = args.num_samples or (500 if args.quick else 20_000)
    device = choose_device(args.device)
    started, load_start = time.perf_counter(), load()
    oracle = load_oracle("pretrained")
    results: dict[str, Any] = {"dsprites": run_dsprites(oracle, args)}
    print(f"dsprites done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    specs = [] if args.pretrained_only else sorted(VARIANTS.glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for path in specs:
            results[path.stem] = run_variant(path, oracle, device, work, args)
            print(f"{path.stem} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        timed = [VARIANTS / "collider.yaml"] if args.quick and specs else specs
        timing = [discovery_timing(path, work, args.timing_samples) for path in timed]
    report = {
        "command": "bench/causal.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "budget_note": (
            f"short budget: each variant model trains {args.minutes} minutes on this shared CPU "
            "(the pretrained dSprites run trained far longer); image-based metrics of the variant "
            "models reflect that budget. The SCM's tables are fitted from label counts before "
            "training, so the SCM TVs do not depend on it."
        ),
        "tv_note": (
            "tv_*_oracle are estimated from num_samples generated images and include sampling "
            "noise: `sampling_floor` is the mean TV a perfect model would score from that many "
            "samples, and tv_oracle_vs_drawn (per entry) the oracle's reading against the classes "
            "the images were drawn from (image errors only)."
        ),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_at_start": load_start,
        "load_average_at_end": load(),
        "minutes_per_variant_model": args.minutes,
        "num_images_per_factor": args.num_images,
        "num_samples_per_distribution": args.num_samples,
        "total_seconds": time.perf_counter() - started,
        "targets_missed": {
            name: sorted(k for k, t in record["targets"].items() if t["met"] is False)
            for name, record in results.items()
        },
        "models": results,
        "discovery_timing": timing,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("causal-quick.json" if args.quick else "causal.json")
    if args.pretrained_only:
        out = out.with_name(out.stem + "-pretrained.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {name: record["summary"] for name, record in results.items()}
    print(json.dumps({"summary": summary, "targets_missed": report["targets_missed"]}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
