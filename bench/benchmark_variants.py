"""`causal-sprites benchmark` on the three shipped categorical variants (issue 22): for each of
chain, fork and collider, the `default` preset trained with the spec's graph for --minutes on
one thread, kept at --snapshots fractions of the budget (`benchmark_checkpoints.Snapshots`, a
step hook that only reads the weights, so the final run is the one an unsnapshotted run would
be), then oracle, identity, resample (of the final run), the final run and its snapshots on the
same seeded queries. Targets: our model within 0.01 IoU of the oracle on identified queries, the
oracle perfect, identity and resample below our model; on the unidentified queries the distance
of the answers' distribution to the truth's beside its floor (`distribution_tv`). Reports the
proxies' rank correlation with the truth across the contenders and across the checkpoints.

Run `.venv/bin/python bench/benchmark_variants.py [--minutes 10] [--queries 1000]
[--snapshots 0.1,0.25,0.5,0.75] [--samples N] [--steps N] [--jobs 2]`; one spawned process per
variant (at most --jobs at once, one torch thread each) trains and benchmarks it; prints a
markdown table and writes bench/results/benchmark-variants.json (--out), the runs and each
variant's benchmark.json/.md under --work. Smoke: `--minutes 0.3 --queries 50 --samples 3000
--out /tmp/benchmark-variants-smoke.json`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from causal_sprites.benchmark import PROXIES, run_benchmark, write_outputs
from causal_sprites.benchmark_checkpoints import Snapshots
from causal_sprites.benchmark_contenders import load_contenders
from causal_sprites.benchmark_queries import draw_queries
from causal_sprites.benchmark_truth import known_data
from causal_sprites.config import PRESETS
from causal_sprites.data.variants import load_spec
from causal_sprites.train import fit

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("chain", "fork", "collider")
MARKER = ".benchmark-variants"  # a work directory this script made (and may remove)
COLUMNS = ("truth_iou", "truth_iou_identified", "effectiveness", "preservation",
           "composition_10", "reversibility", "realism_fd", "distribution_tv",
           "distribution_tv_floor")  # fmt: skip


def spec_path(name: str, args: argparse.Namespace) -> Path:
    """The shipped spec, or with --samples a copy of it drawing that many samples."""
    shipped = ROOT / "examples" / "variants" / f"{name}.yaml"
    if args.samples is None:
        return shipped
    spec = replace(load_spec(shipped), num_samples=args.samples)
    out = args.work / f"{name}-{args.samples}.json"
    out.write_text(json.dumps(spec.to_dict()) + "\n")
    return out


def fresh_dir(path: Path) -> Path:
    """`path` emptied if this script made it, created if absent; refused otherwise."""
    if path.exists():
        if not (path / MARKER).is_file():
            sys.exit(f"{path} exists and was not made by this script: choose another --work")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).touch()
    return path


def train_and_benchmark(name: str, spec: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train the variant's run with snapshots, then benchmark every contender (one thread)."""
    torch.set_num_threads(1)
    known = known_data(str(spec))  # sampled once into the data directory (main process)
    base = PRESETS["default"]
    budget = {"max_steps": args.steps} if args.steps else {"max_minutes": args.minutes}
    config = replace(
        base,
        train=replace(base.train, seed=args.seed, **budget),
        data=known.source,
        graph=tuple(known.edges),
    )
    work = fresh_dir(args.work / name)
    run_dir = work / "run"
    fractions = args.snapshots
    if args.steps:
        hook = Snapshots(run_dir, steps=sorted({max(1, round(f * args.steps)) for f in fractions}))
    else:
        hook = Snapshots(run_dir, seconds=[f * 60 * args.minutes for f in fractions])
    start = time.perf_counter()
    final = fit(run_dir, config, known.data, torch.device("cpu"), False, False, on_step=hook)
    train_wall = time.perf_counter() - start
    steps = int(final["step"])
    snapshots = [(s, t, d) for s, t, d in hook.taken if s < steps]  # the last is the final run
    names = ["oracle", "identity", "resample", str(run_dir), *(str(d) for _, _, d in snapshots)]
    contenders = load_contenders(names, known.schema, known.truth, torch.device("cpu"), args.seed)
    queries = draw_queries(known.data, args.queries, seed=args.seed)
    start = time.perf_counter()
    result, _ = run_benchmark(known, contenders, queries, seed=args.seed)
    bench_wall = time.perf_counter() - start
    write_outputs(work / "benchmark", result)
    labels = {"oracle": "oracle", "identity": "identity", "resample": "resample (final run)"}
    labels[str(run_dir)] = f"final (step {steps:,})"
    for step, _, directory in snapshots:
        labels[str(directory)] = f"step {step:,} ({step / steps:.0%} of the steps)"
    return {
        "variant": name,
        "spec": str(spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec),
        "data": known.source,
        "edges": [list(edge) for edge in known.edges],
        "training": {
            "preset": "default",
            "budget": budget,
            "steps": steps,
            "train_seconds": float(final["elapsed"]),
            "wall_seconds": train_wall,
            "test_nelbo": final.get("test_nelbo"),
            "classifier_accuracy": final.get("classifier_accuracy"),
        },
        "snapshots": [
            {"dir": str(d), "step": s, "seconds": t, "fraction_of_steps": s / steps}
            for s, t, d in snapshots
        ],
        "labels": labels,
        "benchmark_wall_seconds": bench_wall,
        "summary": summary(result, str(run_dir)),
        "benchmark": result,
    }


def summary(result: dict[str, Any], final: str) -> dict[str, Any]:
    """The targets: the gap to the oracle on identified queries (at most 0.01), the oracle
    perfect, identity and resample below our final run (truth IoU)."""
    metrics = {m["name"]: m["metrics"] for m in result["models"] if m["status"] == "ok"}
    ours, oracle = metrics.get(final, {}), metrics.get("oracle", {})
    gap = None
    if ours.get("truth_iou_identified") is not None and oracle.get("truth_iou_identified"):
        gap = oracle["truth_iou_identified"] - ours["truth_iou_identified"]
    below = [metrics.get(n, {}).get("truth_iou") for n in ("identity", "resample")]
    return {
        "gap_to_oracle_identified": gap,
        "within_0.01_of_oracle_identified": None if gap is None else gap <= 0.01,
        "oracle_perfect": oracle.get("truth_iou") == 1.0
        and oracle.get("truth_iou_identified") in (1.0, None),
        "identity_and_resample_below_ours": None
        if ours.get("truth_iou") is None or None in below
        else all(b < ours["truth_iou"] for b in below),
        "failed": [m["name"] for m in result["models"] if m["status"] != "ok"],
    }


def cell(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def table(records: dict[str, dict[str, Any]]) -> str:
    """Per variant the contenders' scores and the targets; then the proxies' rank correlation
    with truth_iou across the contenders and across the checkpoints."""
    lines = []
    for name, record in records.items():
        result, labels, summary_ = record["benchmark"], record["labels"], record["summary"]
        lines += [
            f"### {name} ({record['training']['steps']:,} steps; {result['num_queries']:,} "
            f"queries, {result['identified_fraction']:.0%} identified)",
            "",
            "| contender | " + " | ".join(COLUMNS) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for model in result["models"]:
            label = labels.get(model["name"], model["name"])
            if model["status"] != "ok":
                lines.append(f"| {label} | failed: {model['error']} |")
                continue
            values = " | ".join(cell(model["metrics"].get(c)) for c in COLUMNS)
            lines.append(f"| {label} | {values} |")
        lines += [
            "",
            f"gap to the oracle on identified queries: {cell(summary_['gap_to_oracle_identified'])}"
            f" (within 0.01: {summary_['within_0.01_of_oracle_identified']}); oracle perfect: "
            f"{summary_['oracle_perfect']}; identity and resample below ours: "
            f"{summary_['identity_and_resample_below_ours']}",
            "",
        ]
    head = "".join(f" {n}: contenders | {n}: checkpoints |" for n in records)
    lines += [
        "Spearman's rho with truth_iou (realism_fd is a distance: agreement is negative)",
        "",
        "| proxy |" + head,
        "|---|" + "---:|---:|" * len(records),
    ]
    for proxy in PROXIES:
        row = ""
        for record in records.values():
            result = record["benchmark"]
            series = result.get("proxies_across_checkpoints") or [{"rho": {}}]
            across = series[0]["rho"].get(proxy)
            row += f" {cell(result['proxy_rank_correlation'].get(proxy))} | {cell(across)} |"
        lines.append(f"| {proxy} |{row}")
    return "\n".join(lines) + "\n"


def fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError("fractions strictly between 0 and 1, comma separated")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="Training budget per run.")
    parser.add_argument("--steps", type=int, default=None, help="A step budget instead.")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--snapshots", type=fractions, default=[0.1, 0.25, 0.5, 0.75])
    parser.add_argument("--samples", type=int, default=None, help="Samples per variant.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark-variants")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "benchmark-variants.json"
    )
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.perf_counter(), os.getloadavg()
    specs = {name: spec_path(name, args) for name in args.variants}
    for name, spec in specs.items():  # sample each variant once, before the workers
        print(f"{name}: data {known_data(str(spec)).source}", file=sys.stderr)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {n: pool.submit(train_and_benchmark, n, s, args) for n, s in specs.items()}
        records = {name: future.result() for name, future in futures.items()}
    report = {
        "command": "bench/benchmark_variants.py " + " ".join(sys.argv[1:]),
        "checkpoints": "benchmark_checkpoints.Snapshots, a train.fit on_step hook that only "
        "reads the weights: the final run trains as it would without snapshots (bit for bit "
        "under --steps; under --minutes each snapshot's write, milliseconds, counts in its "
        "clock); snapshot times are wall clock from the first step",
        "wall_seconds": time.perf_counter() - started,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads_per_process": 1,
        "processes_at_once": args.jobs,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "summary": {n: r["summary"] for n, r in records.items()},
        "variants": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(records))
    print(f"wrote {args.out} ({report['wall_seconds']:.0f} s in all)", file=sys.stderr)


if __name__ == "__main__":
    main()
