"""Training benchmark: the issue's MLP baseline, our previous default (one 32-pixel decoder
window for every scale, every pixel in the loss, one learning rate of 2e-3 for all, constant)
and today's default, side by side, same data,
split and wall-clock budget; test NELBO, images/s, FLOPs per image, fraction of the matmul peak,
and the NELBO at the steps both defaults reached (same or better per step?).

Run `.venv/bin/python bench/train.py [--minutes 10] [--quick]`; prints JSON and writes
bench/results/train.json (or train-quick.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from causal_sprites.batches import Batches, split_rows, training_images, training_labels
from causal_sprites.config import PRESETS, RunConfig, TrainConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.runs import read_metrics
from causal_sprites.runtime import choose_device
from causal_sprites.train import fit

RESULTS = Path(__file__).resolve().parent / "results"


def flops_per_image(config: RunConfig, data: DSprites, device: torch.device) -> float:
    """FLOPs of one training step (forward and backward) divided by the batch size."""
    from causal_sprites.runs import build_model

    model = build_model(config).to(device)
    train_rows, _ = split_rows(data, config)
    images, labels = training_images(data, device), training_labels(data, device)
    x, y, noise, uniform = Batches(images, labels, train_rows[:4096], config)(0)
    with FlopCounterMode(display=False) as counter:
        model.loss(x, y, config.train.classifier_weight, noise, uniform)["loss"].backward()
    return counter.get_total_flops() / x.shape[0]


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """Measured FLOP/s of a large square matmul in `dtype` (the machine's practical peak)."""
    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 2048**3 * count / (time.perf_counter() - start)


def run_one(
    name: str, config: RunConfig, data: DSprites | None, device: torch.device, minutes: float
) -> dict[str, Any]:
    """Train one preset for `minutes` of step time; report its final test NELBO and speed.

    `data` None loads the default data (in a worker process of --side-by-side)."""
    data = data if data is not None else DSprites.load()
    config = replace(config, train=replace(config.train, max_minutes=minutes, num_eval_images=4096))
    with tempfile.TemporaryDirectory() as tmp:
        final = fit(Path(tmp) / name, config, data, device, progress=False)
        records = read_metrics(Path(tmp) / name)
    steps = int(final["step"])
    images_per_s = steps * config.train.batch_size / final["elapsed"]
    flops = flops_per_image(config, data, device)
    return {
        "preset": name,
        "bf16": config.train.bf16,
        "steps": steps,
        "epochs": steps / (len(split_rows(data, config)[0]) // config.train.batch_size),
        "train_seconds": final["elapsed"],
        "test_nelbo": final["test_nelbo"],
        "test_recon": final["test_recon"],
        "test_kl": final["test_kl"],
        "classifier_accuracy": final["classifier_accuracy"],
        "images_per_s": images_per_s,
        "flops_per_image": flops,
        "achieved_flops_per_s": flops * images_per_s,
        "curve": [(r["step"], r["test_nelbo"]) for r in records if "test_nelbo" in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="Training budget per model.")
    parser.add_argument("--quick", action="store_true", help="1 minute per model.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fp32-too", action="store_true", help="Also train ours in float32.")
    parser.add_argument(
        "--side-by-side", action="store_true", help="Train all models at once, one core each."
    )
    args = parser.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    device = choose_device(args.device)
    data = None if args.side_by_side else DSprites.load()
    default = PRESETS["default"]
    previous = replace(  # one rate of 2e-3 for all, constant (TrainConfig's own defaults)
        default,
        model=replace(default.model, scale_windows=False),
        train=replace(TrainConfig(), pixel_sample=False),
    )
    contenders = [("baseline", PRESETS["baseline"]), ("default", default), ("previous", previous)]
    if args.fp32_too:
        contenders.append(
            ("default-fp32", replace(default, train=replace(default.train, bf16=False)))
        )
    if args.side_by_side:
        # Both models train at once, one core each, so that whatever else the machine is doing
        # slows them alike.
        context = multiprocessing.get_context("spawn")
        with context.Pool(
            len(contenders), initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            jobs = [(name, config, None, device, minutes) for name, config in contenders]
            results = pool.starmap(run_one, jobs)
    else:
        results = [run_one(name, config, data, device, minutes) for name, config in contenders]
    if args.side_by_side:
        torch.set_num_threads(1)  # each model had one thread: compare with one thread's peak
    peak = {
        "float32": matmul_peak(torch.float32, device),
        "bfloat16": matmul_peak(torch.bfloat16, device),
    }
    for result in results:
        result["fraction_of_matmul_peak"] = (
            result["achieved_flops_per_s"] / peak["bfloat16" if result["bf16"] else "float32"]
        )
    baseline, ours, before = results[0], results[1], results[2]
    before_curve = dict(before["curve"])
    same_steps = [(s, before_curve[s], n) for s, n in ours["curve"] if s in before_curve]
    report = {
        "command": "bench/train.py " + " ".join(sys.argv[1:]),
        "side_by_side": args.side_by_side,
        "load_average_at_end": os.getloadavg(),
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "minutes_per_model": minutes,
        "matmul_peak_flops_per_s": peak,
        "results": results,
        "nelbo_ratio_baseline_over_ours": baseline["test_nelbo"] / ours["test_nelbo"],
        "throughput_ratio_ours_over_baseline": ours["images_per_s"] / baseline["images_per_s"],
        "throughput_ratio_ours_over_previous": ours["images_per_s"] / before["images_per_s"],
        "nelbo_at_same_steps_previous_vs_ours": same_steps,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "train-quick.json" if args.quick else f"train-{device.type}.json"
    if args.side_by_side:
        name = name.replace(".json", "-side-by-side.json")
    (RESULTS / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
