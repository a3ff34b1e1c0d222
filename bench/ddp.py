"""Distributed training throughput: the default model trained for a fixed number of steps with
1 and with N torchrun processes (gloo, CPU), same global batch; images/s and the ratio.

Run `.venv/bin/python bench/ddp.py [--steps 60] [--nproc 2]`; prints JSON and writes
bench/results/ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from causal_sprites.runs import read_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "ddp.json"


def train(nproc: int, threads: int, steps: int, out: Path) -> dict[str, Any]:
    """Train `steps` steps with `nproc` processes of `threads` torch threads each; images/s over
    rank 0's step time (torchrun gives each worker one thread unless told otherwise)."""
    command = [sys.executable, "-m", "causal_sprites", "train", "--out", str(out),
               "--preset", "default", "--steps", str(steps), "--device", "cpu",
               "--no-progress", "--nproc", str(nproc)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, capture_output=True, env=env)
    final = next(r for r in read_metrics(out) if r.get("final"))
    batch = json.loads((out / "config.json").read_text())["train"]["batch_size"]
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "steps": final["step"],
        "step_seconds": final["elapsed"],
        "images_per_s": final["step"] * batch / final["elapsed"],
        "test_nelbo": final["test_nelbo"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single_two_threads = train(1, 2, args.steps, Path(tmp) / "one-2")
        single = train(1, 1, args.steps, Path(tmp) / "one-1")
        several = train(args.nproc, 1, args.steps, Path(tmp) / "several")
    report = {
        "command": "bench/ddp.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "results": [single_two_threads, single, several],
        "throughput_ratio_vs_one_process_one_thread": several["images_per_s"]
        / single["images_per_s"],
        "throughput_ratio_vs_one_process_two_threads": several["images_per_s"]
        / single_two_threads["images_per_s"],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
