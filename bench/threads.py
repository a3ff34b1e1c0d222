"""Training step time under OpenMP's default wait policy (threads spin at each barrier, up to
300,000 times), OMP_WAIT_POLICY=PASSIVE (they sleep at once) and short spins (`spinN`:
GOMP_SPINCOUNT=N, then sleep), with 1 and 2 torch threads, in fresh processes taken in turns
(the policy is read once, when torch loads). With `--busy N`, N extra processes spin meanwhile,
as other jobs on a shared machine do.

Run `.venv/bin/python bench/threads.py [--rounds 3] [--steps 12] [--busy 1]
[--policies default,PASSIVE,spin10000]`; writes bench/results/threads-busy<N>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

STEP_TIMES = """
import statistics, sys, time, torch
from causal_sprites.config import RunConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.runs import build_model
from causal_sprites.runtime import autocast
from causal_sprites.batches import Batches, split_rows, training_images, training_labels
torch.set_num_threads(int(sys.argv[1]))
config = RunConfig()
data = DSprites.load()
rows, _ = split_rows(data, config)
images = training_images(data, torch.device("cpu"))
labels = training_labels(data, torch.device("cpu"))
model = build_model(config).train()
optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
batches = Batches(images, labels, rows, config)
times = []
for step in range(int(sys.argv[2]) + 3):
    x, y, noise, uniform = batches(step)
    start = time.perf_counter()
    with autocast(torch.device("cpu"), True):
        loss = model(x, y, 1.0, noise, uniform)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - start)
print(statistics.median(times[3:]))
"""


def spin() -> None:
    while True:
        pass


def step_time(policy: str, threads: int, steps: int) -> float:
    """Median training step time (s) of a fresh process under an OpenMP wait policy."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("spin"):
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin")
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-c", STEP_TIMES, str(threads), str(steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--busy", type=int, default=0, help="Extra spinning processes.")
    parser.add_argument("--policies", default="default,PASSIVE", help="Comma-separated.")
    args = parser.parse_args()
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    policies = args.policies.split(",")
    contenders = [(policy, threads) for policy in policies for threads in (1, 2)]
    times: dict[str, list[float]] = {f"{p} x{t}": [] for p, t in contenders}
    try:
        for _ in range(args.rounds):
            for policy, threads in contenders:
                times[f"{policy} x{threads}"].append(step_time(policy, threads, args.steps))
    finally:
        for spinner in spinners:
            spinner.terminate()
    medians = {name: statistics.median(t) for name, t in times.items()}
    report = {
        "command": "bench/threads.py " + " ".join(sys.argv[1:]),
        "busy_processes": args.busy,
        "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "median_step_ms": {name: 1000 * t for name, t in medians.items()},
        "images_per_s": {name: 256 / t for name, t in medians.items()},
        "speedup_over_default_2_threads": {
            policy: medians["default x2"] / medians[f"{policy} x2"] for policy in policies
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"threads-busy{args.busy}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
