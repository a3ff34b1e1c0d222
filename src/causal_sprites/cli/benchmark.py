"""`benchmark`: counterfactual image models scored against the exact truth of a data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from causal_sprites.benchmark import markdown_table, run_benchmark, write_outputs
from causal_sprites.benchmark_contenders import load_contenders
from causal_sprites.benchmark_page import write_page
from causal_sprites.benchmark_queries import check_num_queries, draw_queries
from causal_sprites.benchmark_seed import SEED_QUERIES, check_seed_queries
from causal_sprites.benchmark_truth import known_data
from causal_sprites.cli.common import DeviceOption, JsonOption, SeedOption, app
from causal_sprites.data_oracle import DataOracleConfig
from causal_sprites.errors import CausalSpritesError
from causal_sprites.runtime import choose_device


@app.command("benchmark")
def benchmark(
    dataset: Annotated[
        str,
        typer.Option(
            help="dsprites, pendulum, a variant spec (.yaml, .json) or a dataset file whose "
            "truth is known (recorded noise, or every factor combination once)."
        ),
    ],
    model: Annotated[
        list[str],
        typer.Option(
            help="A run directory, pretrained, oracle, identity, resample, seed (needs a run of "
            "the baseline preset among the models), or package.module:factory "
            "(factory(schema, device) returns the model); repeat it."
        ),
    ],
    queries: Annotated[int, typer.Option(help="Queries to draw (1 to 100,000).")] = 1000,
    seed_queries: Annotated[
        int,
        typer.Option(
            help="Queries the seed contender answers (a seeded subset: each answer is a "
            "300-step search); every model is also scored on that subset."
        ),
    ] = SEED_QUERIES,
    oracle_steps: Annotated[
        int,
        typer.Option(
            help="Training steps of the dataset's own oracle (any data but dSprites and its "
            "categorical variants; trained once per dataset file and kept in the data directory).",
        ),
    ] = DataOracleConfig.steps,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    out: Annotated[Path, typer.Option(help="Directory for the results.")] = Path("benchmark"),
    json_out: JsonOption = False,
) -> None:
    """Score counterfactual image models on the same seeded queries (single and joint do() on
    every factor) against the exact truth: error against the true image, with effectiveness,
    preservation, composition and reversibility beside it, and how well each proxy ranks the
    models as the truth does. Writes OUT/benchmark.json, benchmark.md, benchmark.html and
    queries.jsonl. Exit 1 when every model failed (a failing model is reported as failed in the
    results; the others still run)."""
    if out.exists() and not out.is_dir():
        raise CausalSpritesError(f"--out {out} is a file, not a directory")
    check_num_queries(queries)
    check_seed_queries(seed_queries)
    if oracle_steps < 1:
        raise CausalSpritesError(f"--oracle-steps must be >= 1, got {oracle_steps}")
    known = known_data(dataset)
    query_set = draw_queries(known.data, queries, seed)
    chosen = choose_device(device)
    contenders = load_contenders(model, known.schema, known.truth, chosen, seed, seed_queries)
    records = query_set.records(known.schema)
    jsonl = query_set.jsonl(known.schema)

    def written(result: dict[str, Any], shown: dict[str, np.ndarray]) -> None:
        write_outputs(out, result, jsonl)

    result, shown = run_benchmark(
        known, contenders, query_set, seed, True, written, oracle_steps=oracle_steps
    )
    write_outputs(out, result, jsonl)
    write_page(out, result, shown, records, known.schema)
    failed = [m for m in result["models"] if m["status"] != "ok"]
    if len(failed) == len(result["models"]):
        first = failed[0]
        raise CausalSpritesError(
            f"every model failed (written to {out}); {first['name']}: {first['error']}"
        )
    if json_out:
        typer.echo(json.dumps(result))
        return
    typer.echo(markdown_table(result))
    typer.echo(f"wrote {out / 'benchmark.json'}, benchmark.md, benchmark.html, queries.jsonl")
