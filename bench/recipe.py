"""Training recipes of the default preset side by side: each contender trains in its own process
with one thread, all at once (so the machine's load falls on all alike), on the same data, split
and step-time budget; final held-out NELBO and steps of each. A contender is a name and the
train settings it overrides, e.g. `cosine:lr_schedule=cosine` or `lr4:lr=0.004`.

Run `.venv/bin/python bench/recipe.py --minutes 4 constant:lr_schedule=constant
cosine:lr_schedule=cosine`; prints a summary and writes
bench/results/recipe-<names>-<minutes>min.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from dataclasses import fields, replace
from typing import Any

import torch
from train import RESULTS, run_one  # bench/train.py

from causal_sprites.config import PRESETS, RunConfig, TrainConfig


def contender(text: str) -> tuple[str, RunConfig]:
    """`name:key=value,key=value` -> (name, the default preset with those train settings)."""
    name, _, settings = text.partition(":")
    known = [f.name for f in fields(TrainConfig)]
    overrides: dict[str, Any] = {}
    for setting in filter(None, settings.split(",")):
        key, _, value = setting.partition("=")
        if key not in known:
            raise SystemExit(f"unknown train setting {key!r}; settings are {', '.join(known)}")
        try:
            overrides[key] = json.loads(value)  # numbers, true/false, null
        except json.JSONDecodeError:
            overrides[key] = value  # words such as cosine
    default = PRESETS["default"]
    return name, replace(default, train=replace(default.train, **overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("contenders", nargs="+", help="name:key=value,... (train settings)")
    parser.add_argument("--minutes", type=float, default=4.0, help="Step time per model.")
    args = parser.parse_args()
    contenders = [contender(text) for text in args.contenders]
    device = torch.device("cpu")
    with multiprocessing.get_context("spawn").Pool(
        len(contenders), initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        jobs = [(name, config, None, device, args.minutes) for name, config in contenders]
        results = pool.starmap(run_one, jobs)
    report = {
        "command": "bench/recipe.py " + " ".join(sys.argv[1:]),
        "load_average_at_end": os.getloadavg(),
        "minutes_per_model": args.minutes,
        "summary": {
            r["preset"]: {"steps": r["steps"], "test_nelbo": r["test_nelbo"]} for r in results
        },
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    names = "-".join(name for name, _ in contenders)
    out = RESULTS / f"recipe-{names}-{args.minutes:g}min.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
