"""`causal-sprites benchmark` against issue 22's targets on dSprites: the bracket (oracle, identity,
resample) and the pretrained model on the same seeded queries, and the seconds the pretrained
model takes per 1,000 queries (the target: 10,000 queries in under 60 s on 2 CPU cores, the
oracle classifier's training excluded; `seconds_per_1000` times the main pass only, the
reversibility and composition passes come on top).

Run `.venv/bin/python bench/benchmark.py [--queries 10000] [--threads 2]`; prints the table and
writes bench/results/benchmark.json (the command's JSON plus the wall time and threads)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from causal_sprites.benchmark import markdown_table, run_benchmark
from causal_sprites.benchmark_contenders import load_contenders
from causal_sprites.benchmark_queries import draw_queries
from causal_sprites.benchmark_truth import known_data

RESULTS = Path(__file__).parent / "results" / "benchmark.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--models", nargs="+", default=["oracle", "identity", "resample", "pretrained"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    known = known_data("dsprites")
    contenders = load_contenders(args.models, known.schema, known.truth, torch.device("cpu"))
    queries = draw_queries(known.data, args.queries, seed=0)
    start = time.perf_counter()
    result, _ = run_benchmark(known, contenders, queries, seed=0, progress=True)
    result["wall_seconds"] = time.perf_counter() - start
    result["threads"] = args.threads
    print(markdown_table(result))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS} ({result['wall_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
