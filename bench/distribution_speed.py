"""Counterfactual distributions: seconds per query of the factor noise (2,000 draws of each
descendant's abducted Gumbel noise, `FactorGraph.counterfactuals`) at batch 256, on each example
variant's graph and on dSprites' empty one, median of repeated runs.

The noise part depends on the graph and its tables only (not on the image networks), so it is
timed on the variants' own tables; `bench/causal.py` times the same call, and the whole API call,
on trained models. Run `.venv/bin/python bench/distribution_speed.py`; writes
bench/results/distribution-speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from causal_sprites.data.factors import FACTORS, SIZES
from causal_sprites.data.variants import load_spec, sample_classes
from causal_sprites.scm.graph import FactorGraph

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def time_graph(graph: FactorGraph, factual: torch.Tensor, draws: int, repeats: int) -> list[float]:
    """Milliseconds per query of do(shape = another shape) for each repeat."""
    do = {"shape": (factual[:, 0] + 1) % 3}
    times = []
    for repeat in range(repeats):
        generator = torch.Generator().manual_seed(repeat)
        start = time.perf_counter()
        graph.counterfactuals(factual, do, draws, generator)
        times.append(1e3 * (time.perf_counter() - start) / len(factual))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "distribution-speed.json")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    graphs = {
        "dsprites": (
            FactorGraph.from_tables(
                {}, {n: np.ones(k) / k for n, k in zip(FACTORS, SIZES, strict=True)}
            ),
            None,
        )
    }
    for path in sorted((ROOT / "examples" / "variants").glob("*.yaml")):
        spec = load_spec(path)
        graphs[spec.name] = (FactorGraph.from_tables(spec.parents, spec.tables), spec)
    result: dict[str, object] = {
        "batch": args.batch,
        "draws": args.draws,
        "load_average_at_start": os.getloadavg(),
    }
    rng = np.random.default_rng(0)
    for name, (graph, spec) in graphs.items():
        if spec is None:
            factual = np.stack([rng.integers(0, k, args.batch) for k in SIZES], 1)
        else:
            factual = sample_classes(spec)[0][: args.batch]
        times = time_graph(graph, torch.as_tensor(factual), args.draws, args.repeats)
        result[name] = {
            "ms_per_query_median": float(np.median(times)),
            "ms_per_query_max": float(np.max(times)),
            "descendants_of_shape": sorted(graph.descendants(["shape"])),
        }
        print(name, result[name], flush=True)
    result["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
