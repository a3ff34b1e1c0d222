"""Queries on a run: reconstruct, edit, condition, intervene, counterfactual, infer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, cast

import numpy as np
import typer

from causal_sprites.cli.common import (
    FIGURE_IMAGES,
    DataOption,
    JsonOption,
    RunArgument,
    SamplesOption,
    SeedOption,
    app,
    assignment_text,
    load_run_and_data,
    run_data,
    write_png,
)
from causal_sprites.cli.query_file import Query, read_queries
from causal_sprites.data.pictures import read_png
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.figures import assignment_text as figure_text
from causal_sprites.figures import value_label
from causal_sprites.runs import atomic_path
from causal_sprites.scm.abduction import pixel_noise_rule
from causal_sprites.scm.batch import Question, answer
from causal_sprites.scm.factor_sampling import evidence_text, parse_evidence
from causal_sprites.scm.inputs import PixelNoise
from causal_sprites.scm.queries import load_run
from causal_sprites.viz import (
    counterfactual_distribution_figure,
    counterfactual_figure,
    edit_figure,
    query_samples_figure,
    reconstruction_figure,
)

#: What --image takes (`data/pictures.py`'s rule).
IMAGE_HELP = (
    "An image file (PNG) of the run's image size, as its images are: black-and-white, grey or "
    "colour; a grey picture is taken as colour, a colour one whose channels are equal as grey, "
    "an alpha channel only if every pixel is opaque; nothing is resized"
)


@app.command("reconstruct")
def reconstruct(
    run: RunArgument,
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    index: Annotated[list[int], typer.Option(help="Dataset index (repeatable).")],
    data: DataOption = None,
) -> None:
    """Originals and their reconstructions."""
    model, store = load_run_and_data(run, data)
    images, classes = store.images(index), store.factors(index)
    typer.echo(write_png(reconstruction_figure(images, model.reconstruct(images, classes)), out))


@app.command("edit")
def edit(
    run: RunArgument,
    index: Annotated[int, typer.Option(help="Dataset index of the image.")],
    set_: Annotated[list[str], typer.Option("--set", help="factor=value; repeat to chain.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    data: DataOption = None,
) -> None:
    """Same z, changed labels: each --set adds to the previous ones (shape, then orientation)."""
    model, store = load_run_and_data(run, data)
    image, classes = store.images([index]), store.factors([index])
    panels = [("reconstruction", model.reconstruct(image, classes)[0])]
    changes: dict[str, int | float] = {}
    for item in set_:
        changes.update(model.schema.parse_assignments([item]))
        panels.append(
            (
                ", ".join(f"{k}={v}" for k, v in changes.items()),
                model.edit(image, classes, changes)[0],
            )
        )
    typer.echo(write_png(edit_figure(image[0], panels), out))


def _write_npz(path: Path, factual: np.ndarray, counterfactual: np.ndarray) -> Path:
    """Write the image arrays as a compressed .npz atomically (temp file, rename); returns path."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, factual=factual, counterfactual=counterfactual)
    return path


def _marginals_json(marginals: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {name: [round(float(p), 6) for p in probs] for name, probs in marginals.items()}


@app.command("condition")
def condition(
    run: RunArgument,
    out: Annotated[Path, typer.Option(help="PNG: posterior bars beside sampled images.")],
    given: Annotated[
        list[str] | None, typer.Option(help="factor=value evidence, e.g. scale=5 (repeatable).")
    ] = None,
    samples: SamplesOption = 16,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """Images given factor values: the exact posterior over the other factors, then images."""
    model = load_run(run)
    evidence = parse_evidence(model.schema, given or [])
    result = model.condition_query(evidence, samples, seed)
    title = f"p(x | {evidence_text(evidence, model.schema)})" if evidence else "p(x)"
    _show_samples(model, result, title, out, {"given": evidence}, "posterior", json_out)


@app.command("intervene")
def intervene(
    run: RunArgument,
    do: Annotated[list[str], typer.Option("--do", help="factor=value, e.g. posX=31 (repeatable).")],
    out: Annotated[Path, typer.Option(help="PNG: marginal bars beside sampled images.")],
    samples: SamplesOption = 16,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """Images under do(factor=value): intervened factors cut from their parents, the rest
    sampled through the model."""
    model = load_run(run)
    actions = model.schema.parse_assignments(do)
    result = model.intervene_query(actions, samples, seed)
    title = f"p(x | do({figure_text(model.schema, actions)}))"
    _show_samples(model, result, title, out, {"do": actions}, "marginals", json_out)


def _show_samples(
    model: Any,
    result: Any,
    title: str,
    out: Path,
    query: dict[str, Any],
    name: str,
    json_out: bool,
) -> None:
    """Save a conditioning or intervention result's figure; print its path or its JSON record
    (the query, the marginals under `name`, the sampled classes, timing, output path)."""
    shown = slice(0, FIGURE_IMAGES)
    figure = query_samples_figure(
        result.images[shown],
        result.classes[shown],
        result.marginals,
        title,
        model.schema,
        result.continuous,
    )
    write_png(figure, out)
    if not json_out:
        typer.echo(out)
        return
    record = {
        **query,
        name: _marginals_json(result.marginals),
        **({"continuous": result.continuous} if result.continuous else {}),
        "samples": [model.schema.format(c) for c in result.classes],
        "seconds": result.seconds,
        "out": str(out),
    }
    typer.echo(json.dumps(record))


@app.command("counterfactual")
def counterfactual(
    run: RunArgument,
    do: Annotated[
        list[str] | None, typer.Option("--do", help="factor=value, e.g. shape=heart (repeatable).")
    ] = None,
    index: Annotated[
        list[int] | None, typer.Option(help="Dataset index, labels from the data (repeatable).")
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(help=f"{IMAGE_HELP}; labels read off its pixels (repeatable)."),
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option(help='JSON lines: {"index": I} or {"image": PNG}, optional "do": {...}.'),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG: factual | counterfactual | difference.")
    ] = None,
    out_npz: Annotated[
        Path | None,
        typer.Option(
            "--out-npz",
            help="factual and counterfactual images, uint8 (B, H, W), or (B, H, W, 3) in colour.",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            min=1,
            max=100_000,
            help="Also give each answer as a distribution over N draws of the abducted noise.",
        ),
    ] = None,
    pixel_noise: Annotated[
        str | None,
        typer.Option(
            "--pixel-noise",
            help="Each pixel's abducted noise: its posterior median (8-bit images' default: "
            "the median counterfactual) or a draw (binary images' default).",
        ),
    ] = None,
    data: DataOption = None,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """What each image would have looked like under do(...): abduction, action, prediction."""
    if sum(source is not None for source in (index, image, queries)) != 1:
        raise typer.BadParameter("give exactly one", param_hint="--index, --image or --queries")
    model = load_run(run)
    actions = model.schema.parse_assignments(do or [])
    if queries is not None:
        if not queries.is_file():
            raise CausalSpritesError(f"query file {queries} does not exist")
        items = read_queries(queries, actions, model.schema)
    elif not actions:
        raise typer.BadParameter("give at least one factor=value", param_hint="--do")
    else:
        items = [Query(i, None, actions) for i in index or []]
        items += [Query(None, path, actions) for path in image or []]
    store = None
    if any(item.index is not None for item in items):
        store = run_data(model, run, data)
    height, width, channels = model.schema.image_shape
    shape = (height, width) if channels == 1 else (height, width, channels)
    factual = np.zeros((len(items), *shape), np.uint8)
    labels: dict[int, np.ndarray] = {}
    for k, item in enumerate(items):
        if store is not None and item.index is not None:
            factual[k], labels[k] = store.images(item.index), store.factors(item.index)
        elif item.image is not None:
            factual[k] = read_png(item.image, model.schema)
    questions = [Question(factual[k], labels.get(k), item.do) for k, item in enumerate(items)]
    rule = pixel_noise_rule(model.model, cast(PixelNoise | None, pixel_noise), 1)
    answers = answer(model, questions, seed, samples, rule)
    images, distributions = answers.images, answers.distributions
    if out is not None:
        shown = slice(0, FIGURE_IMAGES // 4)
        titles = [f"do({figure_text(model.schema, item.do)})" for item in items[shown]]
        if distributions:
            parts = [distributions[k] for k in range(len(items))][shown]
            figure = counterfactual_distribution_figure(
                factual[shown],
                [p[0] for p in parts],
                [p[1] for p in parts],
                [p[2] for p in parts],
                np.stack([p[3] for p in parts]),
                titles,
            )
        else:
            figure = counterfactual_figure(factual[shown], images[shown], titles)
        write_png(figure, out)
    if out_npz is not None:
        _write_npz(out_npz, factual, images)
    warnings = model.support_warnings(answers.counterfactual, [list(i.do) for i in items])
    for row in np.flatnonzero(answers.doubted).tolist():
        warnings[row] = [*warnings[row], DOUBTED_LABELS]
    records: list[dict[str, Any]] = [
        {
            "index": item.index,
            "image": None if item.image is None else str(item.image),
            "do": item.do,
            "labels": "given" if k in labels else "inferred",
            "factual": model.schema.format(answers.factual[k]),
            "counterfactual": model.schema.format(answers.counterfactual[k]),
            "warnings": warnings[k],
        }
        for k, item in enumerate(items)
    ]
    for k, (tuples, probabilities, _, _, method) in distributions.items():
        records[k]["distribution"] = [
            {"factors": model.schema.format(t), "probability": float(p)}
            for t, p in zip(tuples, probabilities, strict=True)
        ]
        records[k]["distribution_method"] = method
    if json_out:
        summary = {
            "queries": records,
            "seconds": answers.seconds,
            "seconds_per_query": answers.seconds / len(items),
            "pixel_noise": rule,
            "out": None if out is None else str(out),
            "out_npz": None if out_npz is None else str(out_npz),
        }
        typer.echo(json.dumps(summary))
        return
    for query in records[:20]:
        source = f"index {query['index']}" if query["index"] is not None else query["image"]
        typer.echo(f"{source}: {_changes(query['factual'], query['counterfactual'], model.schema)}")
        for warning in query["warnings"]:
            typer.echo(f"  warning: {warning}")
        spread = query.get("distribution", [])
        for entry in spread[:5] if len(spread) > 1 else []:
            text = assignment_text(entry["factors"], model.schema)
            typer.echo(f"  {entry['probability']:7.4f}  {text}")
    if len(records) > 20:
        typer.echo(f"... and {len(records) - 20} more")
    for path in (out, out_npz):
        if path is not None:
            typer.echo(path)


#: What a counterfactual whose labels were read off the pixels says when the reading is in doubt.
DOUBTED_LABELS = (
    "the factors read off this image are in doubt: the model's classifier q(y | x) reads "
    "other factors"
)


def _changes(factual: dict[str, Any], counterfactual: dict[str, Any], schema: Schema) -> str:
    """`shape square->heart, angle 11.58->12.5 degrees`: the factors a counterfactual changed as
    they are shown (a continuous value to a caption's digits), or `no change`."""
    parts = []
    for name, value in counterfactual.items():
        factor = schema.factor(name)
        was = factor.text(factual[name])
        if was != factor.text(value):
            parts.append(f"{name} {was}->{value_label(factor, value)}")
    return ", ".join(parts) or "no change"


def _spread(schema: Schema, spread: np.ndarray) -> dict[str, dict[str, float]]:
    """`spread`: each continuous factor's posterior standard deviation in its unit (none
    where every factor is categorical)."""
    if not schema.continuous:
        return {}
    return {"spread": {n: float(spread[schema.index(n)]) for n in schema.continuous}}


@app.command("infer")
def infer(
    run: RunArgument,
    index: Annotated[list[int] | None, typer.Option(help="Dataset index (repeatable).")] = None,
    image: Annotated[list[Path] | None, typer.Option(help=f"{IMAGE_HELP} (repeatable).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data file: with --index, where to look the indices up; alone, infer "
            "its first --limit images."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Images of --data to read.")] = 100,
    top: Annotated[int, typer.Option(min=1, help="Candidate factor tuples per image.")] = 5,
    json_out: JsonOption = False,
) -> None:
    """The factors of images read off the pixels: the posterior p(y | x), best first."""
    if (index is not None) + (image is not None) + (data is not None and index is None) != 1:
        raise typer.BadParameter("give exactly one", param_hint="--index, --image or --data")
    model = load_run(run, progress=True)
    sources: list[dict[str, Any]]
    if image is not None:
        pixels = np.stack([read_png(path, model.schema) for path in image])
        sources = [{"image": str(path)} for path in image]
    else:
        store = run_data(model, run, data)
        rows = np.asarray(index if index is not None else range(min(limit, len(store))))
        pixels = store.images(rows)
        true = store.factors(rows)
        sources = [
            {"index": int(k), "true": model.schema.format(t)}
            for k, t in zip(rows, true, strict=True)
        ]
    start = time.perf_counter()
    posterior = model.infer(pixels, top=top)
    seconds = time.perf_counter() - start
    flagged = model.out_of_distribution(posterior)
    records = [
        {
            **source,
            "candidates": [
                {"factors": model.schema.format(c), "probability": float(p)}
                for c, p in zip(posterior.classes[b], posterior.probabilities[b], strict=True)
                if p > 0
            ],
            **_spread(model.schema, posterior.spread[b]),
            "log_likelihood": float(posterior.log_likelihood[b]),
            "out_of_distribution": bool(flagged[b]),
            "num_scored": int(posterior.num_scored[b]),
            "search": "complete" if posterior.complete[b] else "budget",
            "classifier_agrees": bool(posterior.classifier_agrees[b]),
        }
        for b, source in enumerate(sources)
    ]
    if json_out:
        summary = {"images": records, "likelihood_range": model.likelihood_range}
        typer.echo(json.dumps({**summary, "weak_readout": model.weak_readout, "seconds": seconds}))
        return
    usual = model.likelihood_range
    for record in records[:20]:
        name = record.get("image") or f"index {record['index']}"
        typer.echo(f"{name}: log-likelihood {record['log_likelihood']:.1f} nats")
        if record["out_of_distribution"] and usual is not None:
            typer.echo(
                f"  warning: unlike any {model.schema.name} image (threshold "
                f"{usual['threshold']:.0f}, "
                f"held-out median {usual['median']:.1f}); these factors explain it badly"
            )
        if record["search"] == "budget":
            typer.echo("  note: the search stopped on its budget; better factors may exist")
        if not record["classifier_agrees"]:
            typer.echo(
                "  warning: the model's classifier q(y | x) reads other factors; the answer "
                "is in doubt, whatever its probability"
            )
        for candidate in record["candidates"]:
            text = assignment_text(candidate["factors"], model.schema)
            typer.echo(f"  {candidate['probability']:7.4f}  {text}")
        for name, spread in record.get("spread", {}).items():
            typer.echo(f"  {name}: +- {spread:.3g} {model.schema.factor(name).unit}".rstrip())
    if len(records) > 20:
        typer.echo(f"... and {len(records) - 20} more")
    if usual is None:
        typer.echo("note: this run records no likelihood range; out-of-distribution is unchecked")
    if model.weak_readout is not None:
        typer.echo(f"note: {model.weak_readout}")
