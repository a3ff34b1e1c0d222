"""Compute and save the standard figures of a run (used by `demo` and the report)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import SCHEMA as DSPRITES_SCHEMA
from causal_sprites.data.factors import SHAPE_NAMES
from causal_sprites.data.schema import Schema
from causal_sprites.runs import atomic_path, read_metrics
from causal_sprites.scm.queries import CausalModel
from causal_sprites.viz import (
    counterfactual_figure,
    edit_figure,
    nelbo_curve_figure,
    query_samples_figure,
    reconstruction_figure,
    sample_grid_figure,
    traversal_figure,
)

#: Values shown per factor in dSprites' traversals (every value of the small factors, a sweep of
#: the rest); other data sweeps at most TRAVERSAL_VALUES values of each of its first
#: TRAVERSAL_FACTORS factors.
TRAVERSAL_STEPS = {"shape": 1, "scale": 1, "orientation": 4, "posX": 4, "posY": 4}
TRAVERSAL_VALUES, TRAVERSAL_FACTORS = 8, 5


@dataclass(frozen=True)
class Queries:
    """What the standard figures ask of a run: a conditioning and an intervention {factor:
    class}, and a counterfactual's do() on one factor, to `value` (None: to the class after each
    image's own). dSprites' are fixed (`standard_queries`); other data's come from its schema."""

    condition: dict[str, int]
    intervene: dict[str, int]
    counterfactual: str
    value: int | None


def standard_queries(schema: Schema) -> Queries:
    """dSprites: given scale = 5, do(posX = 31), do(shape = heart). Any other data: given its
    first factor's last class, do(first factor = its first class), do(first factor = the class
    after each image's own)."""
    if schema == DSPRITES_SCHEMA:
        return Queries({"scale": 5}, {"posX": 31}, "shape", SHAPE_NAMES.index("heart"))
    first = schema.factors[0]
    return Queries({first.name: first.size - 1}, {first.name: 0}, first.name, None)


def assignment_text(schema: Schema, values: dict[str, int]) -> str:
    """`scale = 5, posX = 31`: factor values as the figures write them."""
    return ", ".join(f"{name} = {schema.factor(name).text(v)}" for name, v in values.items())


def query_titles(schema: Schema) -> dict[str, str]:
    """The standard queries as text: `scale = 5`, `do(posX = 31)`, `do(shape = heart)`."""
    queries = standard_queries(schema)
    name, value = queries.counterfactual, queries.value
    to = "another class" if value is None else schema.factor(name).text(value)
    return {
        "condition": assignment_text(schema, queries.condition),
        "intervene": f"do({assignment_text(schema, queries.intervene)})",
        "counterfactual": f"do({name} = {to})",
    }


def save_figure(fig: Figure, out: Path) -> Path:
    """Save a figure as PNG atomically; returns `out`."""
    with atomic_path(out) as temporary:
        fig.savefig(temporary, format="png", dpi=110)
    return out


def traversal_rows(
    model: CausalModel, image: np.ndarray, classes: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """For each factor (each of the first few, on data other than dSprites), the image's z
    decoded at a sweep of that factor's values, others fixed."""
    schema = model.schema
    z = model.encode(image[None], classes[None])
    rows = []
    for i, factor in enumerate(schema.factors[:TRAVERSAL_FACTORS]):
        step = TRAVERSAL_STEPS[factor.name] if schema == DSPRITES_SCHEMA else 0
        step = step or math.ceil(factor.size / TRAVERSAL_VALUES)
        values = np.arange(0, factor.size, step)
        labels = np.repeat(classes[None, -len(schema.names) :], len(values), axis=0)
        labels[:, i] = values
        rows.append((factor.name, model.decode(labels, z.expand(len(values), -1))))
    return rows


def edit_panels(schema: Schema, label: np.ndarray) -> list[tuple[str, dict[str, int]]]:
    """The edits of the standard figure, each adding to the last: dSprites' shape=heart, then
    orientation=15; other data's first two factors, each to the class after the image's own."""
    if schema == DSPRITES_SCHEMA:
        heart = {"shape": SHAPE_NAMES.index("heart")}
        return [("shape=heart", heart), ("+ orientation=15", {**heart, "orientation": 15})]
    panels: list[tuple[str, dict[str, int]]] = []
    changes: dict[str, int] = {}
    for i, factor in enumerate(schema.factors[:2]):
        changes = {**changes, factor.name: (int(label[i]) + 1) % factor.size}
        title = f"{factor.name}={factor.text(changes[factor.name])}"
        panels.append(("+ " + title if i else title, changes))
    return panels


def write_run_figures(
    model: CausalModel, data: DSprites | Dataset, out_dir: Path, seed: int = 0
) -> dict[str, Path]:
    """Samples, reconstructions, an edit (`edit_panels`), traversals, the standard queries
    (`write_query_figures`), the NELBO curve."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data), size=min(8, len(data)), replace=False))
    images, classes = data.images(rows), np.asarray(data.factors(rows), np.int64)
    paths = {
        "samples": save_figure(
            sample_grid_figure(images, classes, model.schema), out_dir / "samples.png"
        ),
        "reconstructions": save_figure(
            reconstruction_figure(images, model.reconstruct(images, classes)),
            out_dir / "reconstructions.png",
        ),
    }
    image, label = images[:1], classes[:1]
    panels = [("reconstruction", model.reconstruct(image, label)[0])]
    for title, changes in edit_panels(model.schema, label[0]):
        panels.append((title, model.edit(image, label, changes)[0]))
    paths["edit"] = save_figure(edit_figure(image[0], panels), out_dir / "edit.png")
    paths["traversals"] = save_figure(
        traversal_figure(traversal_rows(model, image[0], label[0])), out_dir / "traversals.png"
    )
    paths.update(write_query_figures(model, data, out_dir, rows[:4]))
    if model.run_dir is not None and read_metrics(model.run_dir):
        curve = nelbo_curve_figure(read_metrics(model.run_dir))
        paths["nelbo"] = save_figure(curve, out_dir / "nelbo.png")
    return paths


def write_query_figures(
    model: CausalModel, data: DSprites | Dataset, out_dir: Path, rows: np.ndarray, seed: int = 0
) -> dict[str, Path]:
    """One conditioning, one intervention and one counterfactual of the given data rows
    (`standard_queries`), each as a figure."""
    schema = model.schema
    queries, titles = standard_queries(schema), query_titles(schema)
    conditioned = model.condition_query(queries.condition, num_samples=16, seed=seed)
    intervened = model.intervene_query(queries.intervene, num_samples=16, seed=seed)
    images, classes = data.images(rows), np.asarray(data.factors(rows), np.int64)
    name, column = queries.counterfactual, schema.index(queries.counterfactual)
    size = schema.factor(name).size
    values = classes[:, column] + 1 if queries.value is None else np.full(len(rows), queries.value)
    values %= size
    counterfactual = model.counterfactual_query(images, classes, do={name: values}, seed=seed)
    labels = [f"do({name} = {schema.factor(name).text(int(v))})" for v in values]
    return {
        "condition": save_figure(
            query_samples_figure(
                conditioned.images,
                conditioned.classes,
                conditioned.marginals,
                f"given {titles['condition']}",
                schema,
            ),
            out_dir / "condition.png",
        ),
        "intervene": save_figure(
            query_samples_figure(
                intervened.images,
                intervened.classes,
                intervened.marginals,
                titles["intervene"],
                schema,
            ),
            out_dir / "intervene.png",
        ),
        "counterfactual": save_figure(
            counterfactual_figure(images, counterfactual.images, labels),
            out_dir / "counterfactual.png",
        ),
    }


def write_json(path: Path, payload: dict) -> Path:
    """Write a JSON file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2))
    return path
