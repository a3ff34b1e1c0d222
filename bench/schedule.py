"""Learning-rate schedule of the default: constant vs cosine (annealed to 2 % over the budget),
trained side by side (one process and one thread each, at once, so the machine's load falls on
both alike) on the same data, split and step-time budget; final held-out NELBO of each.

Run `.venv/bin/python bench/schedule.py [--minutes 4]`; prints JSON and writes
bench/results/schedule-<minutes>min.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from dataclasses import replace

import torch
from train import RESULTS, run_one  # bench/train.py

from causal_sprites.config import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="Step time per model.")
    args = parser.parse_args()
    default = PRESETS["default"]
    contenders = [
        (schedule, replace(default, train=replace(default.train, lr_schedule=schedule)))
        for schedule in ("constant", "cosine")
    ]
    device = torch.device("cpu")
    with multiprocessing.get_context("spawn").Pool(
        len(contenders), initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        jobs = [(name, config, None, device, args.minutes) for name, config in contenders]
        results = pool.starmap(run_one, jobs)
    constant, cosine = results
    report = {
        "command": "bench/schedule.py " + " ".join(sys.argv[1:]),
        "load_average_at_end": os.getloadavg(),
        "minutes_per_model": args.minutes,
        "results": results,
        "nelbo_constant_over_cosine": constant["test_nelbo"] / cosine["test_nelbo"],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"schedule-{args.minutes:g}min.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    for result in results:
        print(result["preset"], "steps", result["steps"], "test NELBO", result["test_nelbo"])


if __name__ == "__main__":
    main()
