"""The continuous chain variant of dSprites (issue 21): scale -> posX -> posY, all three continuous
(examples/variants/chain_continuous.yaml), shape and orientation uniform classes. Its noise is
recorded, so the true counterfactual of every held-out image under any do() is rendered exactly.
The `--preset` (default: `continuous-sprites`, dSprites' pose decoder at batch 64, which draws
continuous scale and positions; `images` is the conv decoder) is trained for --minutes
CPU-minutes on one torch thread, twice side by side (one process each): with the spec's graph
and ignoring it (every factor a root). Per model it reports the readout from pixels (mean
absolute error per continuous factor in its unit, accuracy per categorical one), `evaluate
--counterfactual`'s scores against the true renders (IoU per intervened factor, the descendants'
counterfactual values against the truth's, composition) and discovery from the pixels; once,
discovery from the labels.

Run `.venv/bin/python bench/continuous_chain.py [--minutes 10]` (two processes: give it both
cores); prints markdown tables and writes bench/results/continuous_chain.json.
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

from causal_sprites.batches import split_rows
from causal_sprites.config import PRESETS
from causal_sprites.continuous_metrics import factor_readout
from causal_sprites.continuous_scores import score_continuous_counterfactuals
from causal_sprites.data.continuous_variants import sample_continuous
from causal_sprites.data.load import load_data
from causal_sprites.data.variant_spec import load_any
from causal_sprites.discovery import discover, discover_from_images
from causal_sprites.scm.queries import load_run
from causal_sprites.train import fit
from causal_sprites.truth import truth_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import machine, side_by_side

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "variants" / "chain_continuous.yaml"
RESULTS = ROOT / "bench" / "results"


def data_file(workdir: Path) -> Path:
    """The variant's dataset file (sampled once into the work directory)."""
    path = workdir / "chain_continuous.npz"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        sample_continuous(load_any(SPEC), path)
    return path


def train_and_score(name: str, graph: tuple[tuple[str, str], ...], args: Any) -> dict[str, Any]:
    """Train with `graph` for --minutes on one thread (or rescore the run in --workdir) and score
    it on held-out rows."""
    torch.set_num_threads(1)
    path = data_file(args.workdir)
    data = load_data(path)
    preset = PRESETS[args.preset]
    config = replace(
        preset,
        data=str(path),
        graph=graph,
        train=replace(preset.train, max_minutes=args.minutes, seed=args.seed),
    )
    run_dir = args.workdir / name
    start = time.perf_counter()
    if args.rescore:
        step = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        step = fit(run_dir, config, data, torch.device("cpu"), progress=False)["step"]
    wall = time.perf_counter() - start
    run = load_run(run_dir)
    _, test_rows = split_rows(data, run.config)
    rows = test_rows[: args.discovery_images]
    images, factors = data.images(rows), np.asarray(data.factors(rows), np.float64)
    start = time.perf_counter()
    read = run.infer(images[: args.readout], top=1).mode
    truth = truth_of(data)
    assert truth is not None
    scores = score_continuous_counterfactuals(run, data, truth, num_images=args.counterfactuals)
    scored = {
        "graph": [list(edge) for edge in graph],
        "training": {"minutes": args.minutes, "steps": step, "wall_seconds": wall},
        "readout": factor_readout(read, factors[: args.readout], data.schema),
        "counterfactuals": scores.to_json(),
        "discovery_pixels": discover_from_images(run, images, truth.edges),
    }
    scored["scoring_seconds"] = time.perf_counter() - start
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--readout", type=int, default=256, help="held-out images read")
    parser.add_argument("--counterfactuals", type=int, default=200, help="images per do()")
    parser.add_argument("--discovery-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="continuous-sprites")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/chain-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "continuous_chain.json")
    parser.add_argument(
        "--rescore", action="store_true", help="score the runs in --workdir, one at a time"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    spec = load_any(SPEC)
    data = load_data(data_file(args.workdir))
    labels = np.asarray(data.factors(np.arange(2000)), np.float64)
    kinds = [f.kind for f in data.schema.factors]
    models = {"graph": spec.edges, "no_graph": ()}
    scored = side_by_side(train_and_score, models, args, processes=1 if args.rescore else None)
    results = {
        "benchmark": "continuous_chain",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine(load_before),
        "data": {"spec": str(SPEC.relative_to(ROOT)), "num_samples": len(data)},
        "discovery_labels": discover(labels, spec.edges, names=data.schema.names, kinds=kinds),
        "models": scored,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """The headline numbers of both models as markdown tables."""
    lines = [f"discovery from labels (2,000 rows): SHD {results['discovery_labels']['shd']}"]
    for model, r in results["models"].items():
        cf = r["counterfactuals"]
        read = r["readout"]
        lines += [
            "",
            f"## {model}: steps {r['training']['steps']}; discovery from pixels: SHD "
            f"{r['discovery_pixels']['shd']}; readout mean abs error "
            + ", ".join(f"{n} {v:.3f}" for n, v in read["mean_abs_error"].items())
            + "; exact "
            + ", ".join(f"{n} {v:.3f}" for n, v in read["exact"].items()),
            "",
            "| do() | IoU vs truth | MAE vs truth | recon MAE of truth | copy IoU | descendants' "
            "CF value error |",
            "|---|---|---|---|---|---|",
        ]
        for name, f in cf["per_factor"].items():
            moved = ", ".join(
                f"{n} {v:.3f}" for n, v in f["counterfactual_factor_mae"].items() if v is not None
            )
            lines.append(
                f"| {name} | {f['ground_truth_iou']:.3f} | {f['ground_truth_mae']:.2f} | "
                f"{f['recon_of_truth_mae']:.2f} | {f['copy_iou']:.3f} | {moved or '-'} |"
            )
        lines.append(
            f"| pooled | {cf['ground_truth_iou']:.3f} | {cf['ground_truth_mae']:.2f} | "
            f"{cf['recon_of_truth_mae']:.2f} | {cf['copy_iou']:.3f} | composition exact "
            f"{cf['composition_exact_1']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
