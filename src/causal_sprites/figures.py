"""Compute and save the standard figures of a run (used by `demo` and the report)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.runs import atomic_path, read_metrics
from causal_sprites.scm.factor_sampling import TOLERANCE
from causal_sprites.scm.queries import CausalModel
from causal_sprites.truth import truth_of
from causal_sprites.viz import (
    counterfactual_figure,
    edit_figure,
    nelbo_curve_figure,
    query_samples_figure,
    reconstruction_figure,
    sample_grid_figure,
    traversal_figure,
)

#: Values a traversal sweeps at most (a schema's `showcase` hints may set each factor's step),
#: over the first TRAVERSAL_FACTORS factors.
TRAVERSAL_VALUES, TRAVERSAL_FACTORS = 8, 5
#: Where in a continuous factor's range the generic queries set it: high, and low for the
#: intervention (two ends of the range, as a categorical factor's last and first class).
HIGH, LOW = 0.75, 0.25
#: Keys of a schema's `extra["showcase"]`: what its figures and the app show first.
SHOWCASE_KEYS = frozenset(
    {"condition", "intervene", "counterfactual", "edits", "traversal_steps", "start"}
)
Value = int | float


@dataclass(frozen=True)
class Queries:
    """What the standard figures ask of a run: a conditioning and an intervention {factor:
    class index or value}, and a counterfactual's do() on one factor, to `value` (None: to the
    class after each image's own)."""

    condition: dict[str, Value]
    intervene: dict[str, Value]
    counterfactual: str
    value: Value | None


def showcase(schema: Schema) -> dict[str, Any]:
    """The schema's own choice of showcase (`extra["showcase"]`: dSprites' in data/factors.py),
    checked; empty when it has none."""
    hints = schema.extra.get("showcase", {})
    if not isinstance(hints, Mapping) or not set(hints) <= SHOWCASE_KEYS:
        raise CausalSpritesError(
            f"schema {schema.name!r}: showcase must be an object with keys among "
            f"{', '.join(sorted(SHOWCASE_KEYS))}"
        )
    return dict(hints)


def hinted_values(schema: Schema, raw: Any) -> dict[str, Value]:
    """{factor: value as the user writes it} of a showcase hint, parsed by the schema."""
    if not isinstance(raw, Mapping) or not raw:
        raise CausalSpritesError(f"schema {schema.name!r}: a showcase query must name factors")
    return {str(name): schema.parse_value(str(name), value) for name, value in raw.items()}


def bounds(factor: Factor) -> tuple[float, float]:
    """A continuous factor's range (low, high)."""
    if factor.low is None or factor.high is None:
        raise CausalSpritesError(f"factor {factor.name!r} is categorical: it has no range")
    return factor.low, factor.high


def classes_are_indices(factor: Factor) -> bool:
    """Whether a categorical factor's classes are named by their own indices (dSprites' scale
    and pose): the app slides over them, the report counts them."""
    return factor.classes == tuple(str(k) for k in range(factor.size))


def range_value(factor: Factor, fraction: float) -> Value:
    """A class index (the last from HIGH on, else the first) or, for a continuous factor, the
    value at `fraction` of its range."""
    if factor.kind == "categorical":
        return factor.size - 1 if fraction >= HIGH else 0
    low, high = bounds(factor)
    return low + fraction * (high - low)


def standard_queries(schema: Schema) -> Queries:
    """The schema's showcase queries (dSprites: given scale = 5, do(posX = 31), do(shape =
    heart)), else on its first categorical factor (first factor): given its last class (3/4 of
    its range), do(its first class) (1/4), do(the class after each image's own) (3/4)."""
    hints = showcase(schema)
    if {"condition", "intervene", "counterfactual"} <= set(hints):
        target = hinted_values(schema, hints["counterfactual"])
        if len(target) != 1:
            raise CausalSpritesError(
                f"schema {schema.name!r}: the showcase counterfactual sets one factor"
            )
        [(name, to)] = target.items()
        condition = hinted_values(schema, hints["condition"])
        return Queries(condition, hinted_values(schema, hints["intervene"]), name, to)
    kinds = [f for f in schema.factors if f.kind == "categorical"]
    first = (kinds or list(schema.factors))[0]
    value = None if first.kind == "categorical" else range_value(first, HIGH)
    return Queries(
        {first.name: range_value(first, HIGH)},
        {first.name: range_value(first, LOW)},
        first.name,
        value,
    )


def value_label(factor: Factor, value: Value) -> str:
    """A value as the figures write it: a class name, or a number with its unit."""
    text = factor.text(value)
    return f"{text} {factor.unit}" if factor.kind == "continuous" and factor.unit else text


def assignment_text(schema: Schema, values: Mapping[str, Value]) -> str:
    """`scale = 5, posX = 31`: factor values as the figures write them."""
    return ", ".join(
        f"{name} = {value_label(schema.factor(name), v)}" for name, v in values.items()
    )


def evidence_label(schema: Schema, values: Mapping[str, Value]) -> str:
    """`scale = 5, angle = 23 ± 0.84 degrees`: evidence as the figures write it, a continuous
    value with the tolerance it is held within (`TOLERANCE` of its range)."""
    parts = []
    for name, value in values.items():
        factor = schema.factor(name)
        if factor.kind == "continuous":
            low, high = bounds(factor)
            text = f"{factor.text(value)} ± {TOLERANCE * (high - low):.2g}"
            parts.append(f"{name} = {f'{text} {factor.unit}'.rstrip()}")
        else:
            parts.append(f"{name} = {value_label(factor, value)}")
    return ", ".join(parts)


def query_titles(schema: Schema) -> dict[str, str]:
    """The standard queries as text: `scale = 5`, `do(posX = 31)`, `do(shape = heart)`."""
    queries = standard_queries(schema)
    name, value = queries.counterfactual, queries.value
    to = "another class" if value is None else value_label(schema.factor(name), value)
    return {
        "condition": evidence_label(schema, queries.condition),
        "intervene": f"do({assignment_text(schema, queries.intervene)})",
        "counterfactual": f"do({name} = {to})",
    }


def start_values(schema: Schema, data: DSprites | Dataset | None = None) -> dict[str, Value]:
    """The factors an image is first chosen by (the app's controls): the schema's showcase
    `start`, else the data's first image's, else each factor's first class (its low end)."""
    hints = showcase(schema)
    if "start" in hints:
        start = hinted_values(schema, hints["start"])
        return {f.name: start.get(f.name, range_value(f, 0.0)) for f in schema.factors}
    if data is not None and len(data):
        return schema.format(data.factors([0])[0])
    return {f.name: range_value(f, 0.0) for f in schema.factors}


def factor_array(schema: Schema, factors: np.ndarray) -> np.ndarray:
    """Factor rows (B, K) as the model takes them: class indices int64 on a categorical schema,
    else float64 (a continuous factor's value)."""
    return np.asarray(factors, np.int64 if schema.categorical else np.float64)


def save_figure(fig: Figure, out: Path) -> Path:
    """Save a figure as PNG atomically; returns `out`."""
    with atomic_path(out) as temporary:
        fig.savefig(temporary, format="png", dpi=110)
    return out


def sweep(factor: Factor, step: int = 0) -> np.ndarray:
    """The values a traversal shows of a factor: every `step`-th class (by default enough for
    at most TRAVERSAL_VALUES), or TRAVERSAL_VALUES values across a continuous range."""
    if factor.kind == "continuous":
        return np.linspace(*bounds(factor), TRAVERSAL_VALUES)
    return np.arange(0, factor.size, step or math.ceil(factor.size / TRAVERSAL_VALUES))


def traversal_rows(
    model: CausalModel, image: np.ndarray, classes: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """For each of the first TRAVERSAL_FACTORS factors, the image's z decoded at a `sweep` of
    that factor's values (steps from the schema's showcase hints), others fixed; a continuous
    factor's row is labelled with the range it sweeps."""
    schema = model.schema
    steps = showcase(schema).get("traversal_steps", {})
    if not isinstance(steps, Mapping) or not all(
        isinstance(v, int) and v > 0 for v in steps.values()
    ):
        raise CausalSpritesError(
            f"schema {schema.name!r}: showcase traversal_steps must map factors to positive "
            "integers"
        )
    z = model.encode(image[None], classes[None])
    rows = []
    for i, factor in enumerate(schema.factors[:TRAVERSAL_FACTORS]):
        values = sweep(factor, steps.get(factor.name, 0))
        labels = np.repeat(classes[None, -len(schema.names) :], len(values), axis=0)
        labels[:, i] = values
        label = factor.name
        if factor.kind == "continuous":
            label += f" {factor.text(values[0])} to {value_label(factor, values[-1])}"
        rows.append((label, model.decode(labels, z.expand(len(values), -1))))
    return rows


def edit_panels(schema: Schema, label: np.ndarray) -> list[tuple[str, dict[str, int]]]:
    """The edits of the standard figure, each adding to the last: the schema's showcase
    `edits` (dSprites: shape=heart, then orientation=15), else its first two categorical
    factors (what `CausalModel.edit` sets), each to the class after the image's own."""
    hints = showcase(schema)
    if "edits" in hints:
        if not isinstance(hints["edits"], list):
            raise CausalSpritesError(f"schema {schema.name!r}: showcase edits must be a list")
        steps = [schema.classes(hinted_values(schema, raw)) for raw in hints["edits"]]
    else:
        factors = [(i, f) for i, f in enumerate(schema.factors) if f.kind == "categorical"]
        steps = [{f.name: (int(label[i]) + 1) % f.size} for i, f in factors[:2]]
    panels: list[tuple[str, dict[str, int]]] = []
    changes: dict[str, int] = {}
    for k, step in enumerate(steps):
        changes = {**changes, **step}
        title = ", ".join(f"{n}={value_label(schema.factor(n), v)}" for n, v in step.items())
        panels.append(("+ " + title if k else title, changes))
    return panels


def write_run_figures(
    model: CausalModel, data: DSprites | Dataset, out_dir: Path, seed: int = 0
) -> dict[str, Path]:
    """Samples, reconstructions, an edit (`edit_panels`), traversals, the standard queries
    (`write_query_figures`), the NELBO curve."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data), size=min(8, len(data)), replace=False))
    images, classes = data.images(rows), factor_array(model.schema, data.factors(rows))
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
    (`standard_queries`; beside the true counterfactual where the data's generator is known),
    each as a figure."""
    schema = model.schema
    queries, titles = standard_queries(schema), query_titles(schema)
    conditioned = model.condition_query(queries.condition, num_samples=16, seed=seed)
    intervened = model.intervene_query(queries.intervene, num_samples=16, seed=seed)
    images, classes = data.images(rows), factor_array(schema, data.factors(rows))
    name, column = queries.counterfactual, schema.index(queries.counterfactual)
    factor = schema.factor(name)
    if queries.value is None:
        values = (classes[:, column] + 1) % factor.size
    else:
        values = np.full(len(rows), queries.value)
    counterfactual = model.counterfactual_query(images, classes, do={name: values}, seed=seed)
    labels = [f"do({name} = {value_label(factor, v)})" for v in values]
    truth = truth_of(data)
    true_images = None if truth is None else truth.counterfactual(rows, {name: values})[1]
    return {
        "condition": save_figure(
            query_samples_figure(
                conditioned.images,
                conditioned.classes,
                conditioned.marginals,
                f"given {titles['condition']}",
                schema,
                conditioned.continuous,
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
                intervened.continuous,
            ),
            out_dir / "intervene.png",
        ),
        "counterfactual": save_figure(
            counterfactual_figure(images, counterfactual.images, labels, true_images),
            out_dir / "counterfactual.png",
        ),
    }


def write_json(path: Path, payload: dict) -> Path:
    """Write a JSON file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2))
    return path
