"""Load benchmark of the web UI: concurrent counterfactual requests against the app on loopback,
through Gradio's HTTP API (the endpoint the page's button calls); p50 and p99 latency, errors.

Run `.venv/bin/python bench/app.py [--run pretrained] [--requests 50]` (serves the run from a
child process on a free port) or `--url http://127.0.0.1:PORT/` for a running one; prints JSON and
writes bench/results/app.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' app server helper
from tests.app_server import running

RESULTS = Path(__file__).resolve().parent / "results"
ENDPOINT = "gradio_api/call/counterfactual"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TARGET_P99_SECONDS = 1.0
#: Seconds one request may take before it counts as an error.
REQUEST_TIMEOUT = 60.0
SHAPES = ("square", "ellipse", "heart")


def payload(rng: np.random.Generator) -> list[Any]:
    """One request's inputs, in the order of the app's counterfactual endpoint: a sprite by
    factor values or by dataset index, and one or two interventions."""
    source = "factors" if rng.random() < 0.5 else "dataset index"
    factors = [
        str(rng.choice(SHAPES)),
        int(rng.integers(6)),
        int(rng.integers(40)),
        int(rng.integers(32)),
        int(rng.integers(32)),
    ]
    do = [str(rng.choice(SHAPES)), "keep", "keep", "keep", "keep"]
    if rng.random() < 0.5:
        do[1] = str(rng.integers(6))
    return [source, *factors, int(rng.integers(737280)), None, *do]


def call(url: str, data: list[Any]) -> tuple[float, str | None]:
    """One request through the queue (POST the inputs, read the event stream); returns its
    latency in seconds and an error message, or None."""
    start = time.perf_counter()
    try:
        request = urllib.request.Request(
            url + ENDPOINT,
            data=json.dumps({"data": data}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            event = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(f"{url}{ENDPOINT}/{event}", timeout=REQUEST_TIMEOUT) as stream:
            text = stream.read().decode()
    except (OSError, ValueError, KeyError) as error:
        return time.perf_counter() - start, f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - start
    if "event: complete" not in text:
        return seconds, text.strip()[:200]
    outputs = json.loads(text.split("data:", 1)[1].strip().splitlines()[0])
    if outputs[-1]:  # the status output: a request the app refused
        return seconds, str(outputs[-1])
    return seconds, None


def burst(url: str, requests: list[list[Any]]) -> tuple[list[float], list[str], float]:
    """Send every request at once from its own thread; latencies, errors, wall seconds."""
    results: list[tuple[float, str | None]] = [(0.0, None)] * len(requests)
    gate = threading.Barrier(len(requests) + 1)

    def worker(k: int) -> None:
        gate.wait()
        results[k] = call(url, requests[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(requests))]
    for thread in threads:
        thread.start()
    gate.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT * 2)
    wall = time.perf_counter() - start
    return [s for s, _ in results], [e for _, e in results if e is not None], wall


def stats(latencies: list[float]) -> dict[str, float]:
    """p50, p99, mean and max in seconds."""
    values = np.asarray(latencies)
    return {
        "p50_s": float(np.percentile(values, 50)),
        "p99_s": float(np.percentile(values, 99)),
        "mean_s": float(values.mean()),
        "max_s": float(values.max()),
    }


def measure(url: str, num_requests: int, seed: int) -> dict[str, Any]:
    """Warm up, time requests one at a time, then all at once."""
    rng = np.random.default_rng(seed)
    for _ in range(3):
        call(url, payload(rng))
    alone = [call(url, payload(rng)) for _ in range(10)]
    latencies, errors, wall = burst(url, [payload(rng) for _ in range(num_requests)])
    return {
        "sequential": {
            "num_requests": len(alone),
            **stats([s for s, _ in alone]),
            "errors": sum(e is not None for _, e in alone),
        },
        "concurrent": {
            "num_requests": num_requests,
            **stats(latencies),
            "errors": len(errors),
            "first_errors": errors[:3],
            "wall_s": wall,
            "requests_per_s": num_requests / wall,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default="pretrained", help="Run to serve (without --url).")
    parser.add_argument("--url", help="A running app on loopback, e.g. http://127.0.0.1:7860/.")
    parser.add_argument("--requests", type=int, default=50, help="Concurrent requests (<= 500).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "app.json")
    args = parser.parse_args()
    if not 1 <= args.requests <= 500:
        parser.error("--requests must lie in 1..500")
    if args.url is not None and urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address (127.0.0.1, localhost or ::1)")
    if args.url is not None:
        result = measure(args.url.rstrip("/") + "/", args.requests, args.seed)
    else:
        with running(args.run) as url:
            result = measure(url, args.requests, args.seed)
    concurrent = result["concurrent"]
    report = {
        "command": " ".join(["bench/app.py", *sys.argv[1:]]),
        "run": args.run if args.url is None else args.url,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0],
        },
        **result,
        "target_p99_s": TARGET_P99_SECONDS,
        "meets_target": concurrent["p99_s"] < TARGET_P99_SECONDS and concurrent["errors"] == 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
