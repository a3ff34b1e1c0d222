"""One training step (forward, backward, Adam) of the previous default (one 32-pixel decoder
window for every scale, every pixel in the loss), the window per scale class alone, plus the
subsampled reconstruction term, and today's default (those and a channels-last conv trunk),
interleaved step by step on the same batches in one process, so the machine's load falls on all
alike. All run today's code otherwise (e.g. the decoder's one MLP pass over all windows).

Run `.venv/bin/python bench/train_step.py [--steps 60] [--threads 1]`; writes
bench/results/step-time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from causal_sprites.batches import Batches, split_rows, training_images, training_labels
from causal_sprites.config import PRESETS, RunConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.runs import build_model
from causal_sprites.runtime import autocast

RESULTS = Path(__file__).resolve().parent / "results"


def contenders() -> dict[str, tuple[RunConfig, torch.memory_format]]:
    """Name -> (config, the conv trunk's memory layout). "previous" is the default when the
    throughput issue was filed: one 32-pixel window, every pixel, the default layout."""
    default = PRESETS["default"]
    windows = replace(default, train=replace(default.train, pixel_sample=False))
    previous = replace(windows, model=replace(default.model, scale_windows=False))
    return {
        "previous": (previous, torch.contiguous_format),
        "scale windows": (windows, torch.contiguous_format),
        "pixel sample": (default, torch.contiguous_format),
        "default": (default, torch.channels_last),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="Timed steps per contender.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "step-time.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DSprites.load()
    images = training_images(data, torch.device("cpu"))
    labels = training_labels(data, torch.device("cpu"))
    setups = {}
    for name, (config, layout) in contenders().items():
        torch.manual_seed(0)
        model = build_model(config).train()
        model.encoder.trunk.use_layout(layout)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        rows, _ = split_rows(data, config)
        setups[name] = (model, optimizer, Batches(images, labels, rows, config), config)
    times: dict[str, list[float]] = {name: [] for name in setups}
    device = torch.device("cpu")
    for step in range(args.steps + 5):
        for name, (model, optimizer, batches, config) in setups.items():
            x, y, noise, uniform = batches(step)
            start = time.perf_counter()
            with autocast(device, config.train.bf16):
                loss = model(x, y, config.train.classifier_weight, noise, uniform)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 5:  # the first steps warm the allocator and oneDNN's kernel caches
                times[name].append(time.perf_counter() - start)
    batch = PRESETS["default"].train.batch_size
    summary = {
        name: {
            "median_step_ms": 1000 * statistics.median(t),
            "images_per_s": batch / statistics.median(t),
            "p10_p90_step_ms": [1000 * float(np.quantile(t, q)) for q in (0.1, 0.9)],
        }
        for name, t in times.items()
    }
    report = {
        "command": "bench/train_step.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "threads": args.threads,
        "timed_steps": args.steps,
        "load_average_at_end": os.getloadavg(),
        "results": summary,
        "speedup_over_previous": {
            name: summary["previous"]["median_step_ms"] / result["median_step_ms"]
            for name, result in summary.items()
        },
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
