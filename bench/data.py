"""Data benchmarks: generation time and memory, loaded-set memory, unpack speed, fidelity.

Run `.venv/bin/python bench/data.py [--quick]`; prints JSON and writes bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_sprites.data.dsprites import DEFAULT_FILENAME, unpack, unpack_torch
from causal_sprites.data.factors import NUM_IMAGES
from causal_sprites.data.render import render

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dsprites_reference.npz"
RESULTS = Path(__file__).resolve().parent / "results" / "data.json"
BATCH = 256
MB = 2**20

GENERATE = """
import sys, time
from pathlib import Path
from causal_sprites.data.render import write_npz
start = time.perf_counter()
write_npz(Path(sys.argv[1]))
print(time.perf_counter() - start)
"""

LOAD = """
import json, resource, sys, time
from causal_sprites.data.dsprites import DSprites
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
start = time.perf_counter()
data = DSprites.load(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_delta": rss() - before,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "packed_bytes": data.packed.nbytes, "num_images": len(data)}))
"""


def generation(directory: Path) -> tuple[dict[str, Any], Path]:
    """Time the full-set generator in a child process and read the child's peak RSS."""
    path = directory / DEFAULT_FILENAME
    out = subprocess.run(
        [sys.executable, "-c", GENERATE, str(path)], check=True, capture_output=True, text=True
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = {
        "seconds": round(float(out.stdout.strip()), 2),
        "peak_rss_mb": round(peak / MB, 1),
        "file_mb": round(path.stat().st_size / MB, 1),
        "target_seconds": 30,
    }
    return result, path


def loading(path: Path) -> dict[str, Any]:
    """Load the full set twice in child processes: from the .npz, then from the packed cache."""
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", LOAD, str(path)], check=True, capture_output=True, text=True
        )
        runs.append(json.loads(out.stdout))
    cold, cached = runs
    num = cold["num_images"]
    return {
        "num_images": num,
        "load_seconds_from_npz": round(cold["seconds"], 2),
        "load_seconds_from_cache": round(cached["seconds"], 2),
        "peak_rss_mb_from_npz": round(cold["peak_rss"] / MB, 1),
        "resident_mb_packed": round(cached["rss_delta"] / MB, 1),
        "packed_mb": round(cold["packed_bytes"] / MB, 1),
        "uint8_mb": round(num * 4096 / MB, 1),
        "float32_mb": round(num * 4096 * 4 / MB, 1),
        "target_packed_mb": 400,
    }


def throughput(repeats: int) -> dict[str, Any]:
    """Images per second unpacking batches of 256: numpy, torch on CPU, and CUDA when present."""
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (repeats, BATCH, 512), dtype=np.uint8)

    def rate(fn: Any, batches: Any, sync: Any = None) -> float:
        fn(batches[0])
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        if sync:
            sync()
        return repeats * BATCH / (time.perf_counter() - start)

    result = {
        "numpy_images_per_s": rate(unpack, packed),
        "torch_cpu_images_per_s": rate(unpack_torch, torch.from_numpy(packed)),
        "torch_threads": torch.get_num_threads(),
        "target_images_per_s": 200_000,
    }
    # torch's intra-op threads collapse when other processes load the cores; one thread does not.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result["torch_cpu_1_thread_images_per_s"] = rate(unpack_torch, torch.from_numpy(packed))
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        on_gpu = torch.from_numpy(packed).cuda()
        result["torch_cuda_images_per_s"] = rate(unpack_torch, on_gpu, torch.cuda.synchronize)
    return {key: round(value) for key, value in result.items()}


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of binary images (B, 64, 64); two empty images score 1."""
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def fidelity(path: Path) -> dict[str, Any]:
    """The generator against real dSprites frames at their labels, and at the best orientation."""
    result: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as reference:
        for name in ("animation", "labelled"):
            real, classes = reference[f"{name}_imgs"], reference[f"{name}_classes"]
            ious = iou(render(classes), real)
            turned = np.repeat(classes, 40, axis=0)
            turned[:, 2] = np.tile(np.arange(40), len(classes))
            best = iou(render(turned).reshape(len(classes), 40, 64, 64), real[:, None]).max(axis=1)
            result[name] = {
                "num_images": len(real),
                "exact_matches": int((ious == 1.0).sum()),
                "mean_iou_at_label": round(float(ious.mean()), 5),
                "mean_best_iou_over_orientations": round(float(best.mean()), 5),
                "max_pixels_off": int((render(classes) != real).sum(axis=(1, 2)).max()),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the full-set generation/load")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="real dSprites frames")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "full_set_images": NUM_IMAGES,
    }
    if not args.quick:
        with tempfile.TemporaryDirectory() as directory:
            results["generation"], path = generation(Path(directory))
            results["memory"] = loading(path)
    results["unpack_batch_256"] = throughput(50 if args.quick else 400)
    results["fidelity"] = fidelity(args.reference)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
