"""A weak model's readout must not take minutes: the bounded posterior search against the unbounded
one (every wider search to its round limit, as before the budget), side by side in one run, on a
freshly trained 50-step run and on the shipped pretrained model; then the whole `evaluate` and
`report` commands of both, timed as processes.

Per model: seconds per image of each search on the same held-out images, how many stopped on the
budget, and whether the two searches give the same modes (they must on the pretrained model).

Run `.venv/bin/python bench/readout.py [--num-images 64] [--steps 50]`; writes
bench/results/readout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from causal_sprites.batches import split_rows
from causal_sprites.data.dsprites import DSprites
from causal_sprites.metrics import readout_accuracy
from causal_sprites.model.readout import SearchBudget
from causal_sprites.scm.queries import CausalModel, load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLI = [sys.executable, "-m", "causal_sprites"]
#: The search before the budget existed: every wider search, no cap on scored tuples.
UNBOUNDED = SearchBudget(max_scored=10**9, escalate=True)


def searches(model: CausalModel, data: DSprites, num_images: int) -> dict[str, Any]:
    """The unbounded and the run's bounded search on the same held-out images, interleaved per
    half so that the machine's load falls on both alike."""
    _, test_rows = split_rows(data, model.config)
    rows = np.sort(np.random.default_rng(0).permutation(test_rows)[:num_images])
    images, truth = data.images(rows), data.factors(rows)
    halves = np.array_split(np.arange(len(rows)), 2)
    seconds = {"unbounded": 0.0, "bounded": 0.0}
    parts: dict[str, list[Any]] = {"unbounded": [], "bounded": []}
    for half in halves:
        for name, budget in (("unbounded", UNBOUNDED), ("bounded", model.search_budget)):
            start = time.perf_counter()
            parts[name].append(model.infer(images[half], top=5, budget=budget))
            seconds[name] += time.perf_counter() - start
    out: dict[str, Any] = {"num_images": len(rows), "weak_readout": model.weak_readout}
    for name, posts in parts.items():
        modes = np.concatenate([p.mode for p in posts])
        complete = np.concatenate([p.complete for p in posts])
        scored = np.concatenate([p.num_scored for p in posts])
        out[name] = {
            "seconds_per_image": seconds[name] / len(rows),
            "mean_scored": float(scored.mean()),
            "num_stopped_on_budget": int((~complete).sum()),
            "image_equivalent": readout_accuracy(modes, truth, images, model.schema)[
                "image_equivalent"
            ],
            "modes": modes,
        }
    same = out["unbounded"].pop("modes") == out["bounded"].pop("modes")
    out["same_modes"] = float(same.all(1).mean())
    out["speedup"] = out["unbounded"]["seconds_per_image"] / out["bounded"]["seconds_per_image"]
    return out


def timed(args: list[str]) -> float:
    """Seconds a CLI command takes as a whole process (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    data = DSprites.load()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg()[0],
            "platform": platform.platform(),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        weak = Path(tmp) / f"steps{args.steps}"
        subprocess.run(
            [*CLI, "train", "--out", str(weak), "--steps", str(args.steps)],
            check=True,
            capture_output=True,
        )
        for name, run in ((f"{args.steps}_steps", str(weak)), ("pretrained", "pretrained")):
            record = searches(load_run(run), data, args.num_images)
            report = Path(tmp) / f"{name}.html"
            record["evaluate_seconds"] = timed(["evaluate", run, "--json"])
            record["report_seconds"] = timed(["report", run, "--out", str(report)])
            results["models"][name] = record
            print(name, json.dumps(record, indent=1), flush=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "readout.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'readout.json'}")


if __name__ == "__main__":
    main()
