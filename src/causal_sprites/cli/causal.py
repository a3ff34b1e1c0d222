"""Evaluation, causal discovery, the report and the web app of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from causal_sprites.cli.common import (
    DataOption,
    JsonOption,
    RunArgument,
    app,
    load_run_and_data,
)
from causal_sprites.config import parse_graph
from causal_sprites.continuous_scores import (
    ContinuousEvaluation,
    score_continuous_counterfactuals,
    score_continuous_distributions,
)
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.variant_spec import load_graph
from causal_sprites.data.variants import variant_of
from causal_sprites.discovery import discover_file, discover_from_images
from causal_sprites.errors import CausalSpritesError
from causal_sprites.evaluation import (
    PosteriorReader,
    score_counterfactuals,
    score_distributions,
    score_run,
)
from causal_sprites.oracle import load_oracle
from causal_sprites.report import write_report
from causal_sprites.scores import Evaluation, score_image_counterfactuals, truth_rows
from causal_sprites.train import rewrite_graph
from causal_sprites.truth import truth_of

#: Continuous data without a known generator: no true counterfactual to score against.
NO_CONTINUOUS_TRUTH = (
    "counterfactual scores need a dataset whose true counterfactuals are known: {name} has "
    "continuous factors but no recorded generator (the pendulum written by data generate "
    "--dataset pendulum has one)"
)


@app.command("evaluate")
def evaluate(
    run: RunArgument,
    data: DataOption = None,
    num_images: Annotated[int, typer.Option(min=2, help="Held-out images to score.")] = 4096,
    counterfactual: Annotated[
        bool, typer.Option("--counterfactual", help="Also score counterfactual soundness.")
    ] = False,
    oracle: Annotated[
        str, typer.Option(help="Oracle classifier directory, or `pretrained` (dSprites only).")
    ] = "pretrained",
    num_counterfactuals: Annotated[
        int, typer.Option(min=2, help="Images per intervened factor (with --counterfactual).")
    ] = 128,
    json_out: JsonOption = False,
) -> None:
    """Test NELBO (recon, KL; on your own images also bits per dimension), reconstruction IoU
    (binary images) or MAE and PSNR (grey or colour), classifier accuracy, z-leakage and the
    readout; with --counterfactual also ground-truth fidelity, effectiveness, preservation,
    composition and reversibility (Monteiro et al. 2023): on dSprites and causal variants of any
    dataset holding every factor combination (against the base's images; on such a variant the
    distributions too, from --num-counterfactuals images per query read back by the run's own
    posterior), on a dataset holding every factor combination exactly once (its own truth), or
    on data whose generator is known (the pendulum: against the true render, errors in each
    factor's unit, and the interventional distributions' Wasserstein-1 beside its floor)."""
    model, store = load_run_and_data(run, data)
    dsprites = isinstance(store, DSprites)
    truth = truth_of(store) if counterfactual else None
    variant = None
    if counterfactual and truth is None:
        variant = variant_of(data or (Path(model.config.data) if model.config.data else None))
        if variant is not None and variant[0].dataset is not None:
            _ = variant[0].index  # refuse a missing or incomplete base before scoring
        elif not dsprites and not store.schema.categorical:
            raise CausalSpritesError(NO_CONTINUOUS_TRUTH.format(name=store.schema.name))
        elif not dsprites:
            truth_rows(store, model.schema)  # refuse data without a known truth before scoring
    scores = score_run(model, store, num_images)
    result: Evaluation | ContinuousEvaluation
    if truth is not None:
        result = ContinuousEvaluation(
            scores,
            score_continuous_counterfactuals(model, store, truth, num_counterfactuals),
            score_continuous_distributions(model, truth),
        )
    elif counterfactual and dsprites:
        judge = load_oracle(oracle)
        spec = variant[0] if variant else None
        result = Evaluation(
            scores,
            score_counterfactuals(model, store, judge, variant, num_counterfactuals),
            score_distributions(model, judge, spec, store),
        )
    elif counterfactual and variant is not None:
        reader = PosteriorReader(model)
        result = Evaluation(
            scores,
            score_counterfactuals(model, store, None, variant, num_counterfactuals),
            score_distributions(
                model, reader, variant[0], store, num_counterfactuals, reader=reader.name
            ),
        )
    elif counterfactual:
        result = Evaluation(scores, score_image_counterfactuals(model, store, num_counterfactuals))
    else:
        result = Evaluation(scores)
    if json_out:
        typer.echo(json.dumps(result.to_json()))
        return
    for line in result.lines():
        typer.echo(line)


def _write_discovered_graph(
    run_dir: Path, edges: list[dict], orient: str | None
) -> list[list[str]]:
    """Orient the discovered edges (undirected ones by --orient) and store the DAG in a run."""
    chosen = set(parse_graph(orient or ""))
    graph = []
    for edge in edges:
        pair = (edge["from"], edge["to"])
        if edge["directed"]:
            graph.append(pair)
        elif pair in chosen or pair[::-1] in chosen:
            graph.append(pair if pair in chosen else pair[::-1])
        else:
            raise CausalSpritesError(
                f"the data cannot orient {pair[0]} -- {pair[1]}; choose a direction with "
                f'--orient "{pair[0]}->{pair[1]}" (or the reverse)'
            )
    rewrite_graph(run_dir, tuple(graph))
    return [list(pair) for pair in graph]


@app.command("discover")
def discover(
    run: Annotated[
        str | None,
        typer.Argument(help="Read the factors off the pixels with this run's posterior p(y | x)."),
    ] = None,
    data: DataOption = None,
    truth: Annotated[
        Path | None, typer.Option(help="Variant spec whose graph to score against (SHD).")
    ] = None,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Test level.")] = 1e-3,
    test: Annotated[str, typer.Option(help="Independence test: chisq or gsq.")] = "chisq",
    num_images: Annotated[
        int, typer.Option(min=50, help="Images to read (with RUN), a seeded subsample.")
    ] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the subsample.")] = 0,
    write_graph: Annotated[
        Path | None, typer.Option(help="Store the discovered DAG in this run directory.")
    ] = None,
    orient: Annotated[
        str | None, typer.Option(help='Directions for undirected edges, e.g. "shape->scale".')
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """PC causal discovery over the factors, from a data file's labels or from the pixels."""
    spec = load_graph(truth) if truth is not None else None
    options: dict[str, Any] = {"alpha": alpha, "test": test}
    if run is None:
        result = discover_file(data, spec, **options)
    else:
        model, store = load_run_and_data(run, data)
        count = min(num_images, len(store))
        rows = np.sort(np.random.default_rng(seed).choice(len(store), count, replace=False))
        result = discover_from_images(model, store.images(rows), spec, seed=seed, **options)
    if write_graph is not None:
        result["written_graph"] = _write_discovered_graph(write_graph, result["edges"], orient)
    if json_out:
        typer.echo(json.dumps(result))
        return
    source = f"factors drawn from {run}'s posterior p(y | x)" if run else "labels"
    typer.echo(
        f"PC ({result['test']}, alpha {result['alpha']:g}) on {result['num_samples']} rows "
        f"({source}), {result['seconds']:.2f} s"
    )
    for edge in result["edges"] or [None]:
        if edge is None:
            typer.echo("  no edges: every factor pair is independent")
        else:
            arrow = "->" if edge["directed"] else "--"
            typer.echo(f"  {edge['from']} {arrow} {edge['to']}")
    for t in result["tests"]:
        pair = f"{t['a']:>11} ~ {t['b']:<11}"
        typer.echo(f"  {pair} p {t['p_value']:<9.3g} V {t['cramers_v']:.3f}  {t['test']}")
    for t in result["ci_tests"]:
        if t["given"] and t["p_value"] > result["alpha"]:
            given = ", ".join(t["given"])
            typer.echo(f"  {t['a']} _||_ {t['b']} | {given}: p {t['p_value']:.3g} ({t['test']})")
    if result["shd"] is not None:
        typer.echo(f"  SHD to {truth}: {result['shd']}")
    if any(not e["directed"] for e in result["edges"]):
        typer.echo("  undirected edges: the data cannot orient them; choose a direction yourself")
    if result.get("num_stopped_on_budget"):
        typer.echo(
            f"  warning: the factors of {result['num_stopped_on_budget']} of {count} images were "
            "read by a search that stopped on its budget; this graph is not to be trusted"
        )
        if model.weak_readout is not None:
            typer.echo(f"  {model.weak_readout}")


@app.command("report")
def report(
    run: RunArgument,
    data: DataOption = None,
    out: Annotated[
        Path | None, typer.Option(help="HTML to write (default: RUN/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page with every figure and metric of a run (on your own images,
    the sections that need dSprites say why they are not available)."""
    model, store = load_run_and_data(run, data)
    typer.echo(write_report(model, store, out))


@app.command("app")
def web_app(
    run: RunArgument,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes the app.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 7860,
    data: DataOption = None,
) -> None:
    """Serve the web UI of a run, with its data's factors and images (needs the `app` extra:
    pip install 'causal-sprites\\[app]')."""
    try:
        from causal_sprites.app import launch
    except ImportError:
        raise CausalSpritesError(
            "the web UI needs Gradio: pip install 'causal-sprites[app]'"
        ) from None
    launch(run, host, port, data)
