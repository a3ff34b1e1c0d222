"""Continuous mechanisms of dSprites variants (issue 21). The renderer draws a sprite at any scale,
orientation and position (`data/render.py` `render_values`), so a variant spec may make those
factors continuous, each with

    value = low + (high - low) * sigmoid(intercept + sum_p weight_p * parent_p + noise_scale * U),

U ~ Normal(0, 1): a logit-normal over [low, high] whose location follows the parents, invertible
in U, so the recorded U gives every counterfactual exactly (one invertible map per factor, as
DeepSCM's; Pawlowski, Castro & Glocker 2020). A continuous parent enters normalised to [0, 1] over
its range, so weights are unitless; a categorical parent (shape) adds its class's weight.
`data/variant_spec.py` parses the specs; `data/continuous_variants.py` samples them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import torch
from scipy.special import expit, logit

from causal_sprites.data.factors import SCHEMA as DSPRITES
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.graph import FactorGraph, topological_order

#: What the renderer draws of each factor that may be continuous (`render_values` checks the
#: same): both ends of a range must pass the test.
RENDERABLE: Final[dict[str, tuple[Callable[[float], bool], str]]] = {
    "scale": (lambda v: 0.0 < v <= 1.0, "within (0, 1]"),
    "orientation": (math.isfinite, "finite (radians)"),
    "posX": (lambda v: 0.0 <= v <= 1.0, "within [0, 1]"),
    "posY": (lambda v: 0.0 <= v <= 1.0, "within [0, 1]"),
}
#: Keys of a continuous factor's mechanism entry, and of its `sigmoid`.
ENTRY_KEYS: Final = frozenset({"range", "unit", "sigmoid"})
SIGMOID_KEYS: Final = frozenset({"intercept", "weights", "noise_scale"})

#: A parent's weight: a number (continuous parent) or one per class (categorical parent).
Weight = float | tuple[float, ...]


class SpecDag:
    """What every variant spec (categorical `VariantSpec` or `ContinuousSpec`) says of its DAG
    and its categorical tables: edges, a topological order, the `train --graph` string."""

    parents: dict[str, tuple[str, ...]]
    tables: dict[str, np.ndarray]
    schema: Schema

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """(parent, child) pairs, children in factor order."""
        return tuple((p, child) for child in self.schema.names for p in self.parents[child])

    @property
    def order(self) -> tuple[str, ...]:
        """The factors in a topological order (ties in factor order)."""
        return topological_order(self.parents)

    def graph_string(self) -> str:
        """The edges as `train --graph` takes them: `"shape->scale,scale->posX"`."""
        return ",".join(f"{p}->{c}" for p, c in self.edges)

    def table_entries(self) -> dict[str, dict[str, Any]]:
        """The canonical mechanism entries of the tables: those with parents or not uniform."""
        return {
            node: {"parents": list(self.parents[node]), "table": table.tolist()}
            for node, table in self.tables.items()
            if self.parents[node] or not is_uniform(table)
        }


def is_uniform(table: np.ndarray) -> bool:
    """Whether a table (K,) is uniform (the default of a factor without a mechanism)."""
    return bool(np.allclose(table, 1.0 / table.shape[-1], rtol=0, atol=1e-15))


@dataclass(frozen=True)
class Sigmoid:
    """A continuous factor's mechanism over [low, high] (see the module docstring)."""

    low: float
    high: float
    intercept: float = 0.0
    weights: Mapping[str, Weight] = field(default_factory=dict)
    noise_scale: float = 1.0

    def location(self, factors: Mapping[str, np.ndarray], schema: Schema) -> np.ndarray:
        """intercept + sum_p weight_p * parent_p of the parents' values {factor: (B,)} (a class
        index or a value): a scalar without parents."""
        total = np.asarray(self.intercept, dtype=np.float64)
        for parent, weight in self.weights.items():
            values = np.asarray(factors[parent], dtype=np.float64)
            if isinstance(weight, tuple):
                total = total + np.asarray(weight)[values.astype(np.int64)]
            else:
                low, high = _range(schema.factor(parent))
                total = total + weight * (values - low) / (high - low)
        return total

    def value(self, location: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The factor's value (B,) of its parents' `location` and its noise U (B,)."""
        unit = expit(location + self.noise_scale * np.asarray(noise, dtype=np.float64))
        return np.clip(self.low + (self.high - self.low) * unit, self.low, self.high)

    def noise(self, location: np.ndarray, value: np.ndarray) -> np.ndarray:
        """The noise U (B,) that gives `value` (B,) at `location`: the mechanism inverted."""
        unit = (np.asarray(value, dtype=np.float64) - self.low) / (self.high - self.low)
        return (logit(unit) - location) / self.noise_scale

    def to_dict(self) -> dict[str, Any]:
        """The spec's `sigmoid` entry."""
        weights = {p: list(w) if isinstance(w, tuple) else w for p, w in self.weights.items()}
        return {"intercept": self.intercept, "weights": weights, "noise_scale": self.noise_scale}


def _range(factor: Factor) -> tuple[float, float]:
    assert factor.low is not None and factor.high is not None
    return factor.low, factor.high


@dataclass(frozen=True, eq=False)
class ContinuousSpec(SpecDag):
    """A validated variant of dSprites with continuous factors: each factor's parents, a
    categorical factor's table (*parent sizes, K) (its parents categorical), a continuous one's
    `Sigmoid`; `schema` is dSprites' with those factors continuous."""

    name: str
    num_samples: int
    seed: int
    parents: dict[str, tuple[str, ...]]
    tables: dict[str, np.ndarray]
    sigmoids: dict[str, Sigmoid]
    schema: Schema
    description: str = ""

    @functools.cached_property
    def graph(self) -> FactorGraph:
        """The categorical factors' Gumbel-max SCM (as `VariantSpec.graph`)."""
        with np.errstate(divide="ignore"):
            logs = {n: torch.from_numpy(np.log(t)) for n, t in self.tables.items()}
        return FactorGraph({n: self.parents[n] for n in self.tables}, logs)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form; `variant_spec.parse_any` reads it back."""
        mechanisms = self.table_entries()
        for node, sigmoid in self.sigmoids.items():
            factor = self.schema.factor(node)
            mechanisms[node] = {
                "range": [sigmoid.low, sigmoid.high],
                "unit": factor.unit,
                "sigmoid": sigmoid.to_dict(),
            }
        return {
            "name": self.name,
            "description": self.description,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "edges": [list(edge) for edge in self.edges],
            "mechanisms": {n: mechanisms[n] for n in self.schema.names if n in mechanisms},
        }


def is_continuous_entry(entry: Any) -> bool:
    """Whether a mechanism entry declares a continuous factor (it has a `range` or a `sigmoid`)."""
    return isinstance(entry, Mapping) and bool({"range", "sigmoid"} & set(entry))


def continuous_factor(node: str, entry: Mapping[str, Any]) -> Factor:
    """The continuous factor a mechanism entry declares: its `range` [low, high], which the
    renderer must draw, and its `unit` (optional)."""
    test, wanted = RENDERABLE.get(node, (None, ""))
    if test is None:
        raise CausalSpritesError(
            f"{node} cannot be continuous: the renderer draws {', '.join(RENDERABLE)} at any "
            "value, shape as one of its classes"
        )
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise CausalSpritesError(
            f"continuous mechanism of {node} has unknown keys {', '.join(map(str, unknown))}; "
            f"keys are {', '.join(sorted(ENTRY_KEYS))}"
        )
    span = entry.get("range")
    if span is None:
        raise CausalSpritesError(f"continuous factor {node} needs a range: [low, high]")
    if not (
        isinstance(span, list | tuple)
        and len(span) == 2
        and all(_is_number(v) and math.isfinite(v) for v in span)
        and span[0] < span[1]
    ):
        raise CausalSpritesError(f"range of {node} must be [low, high], low < high, got {span!r}")
    low, high = float(span[0]), float(span[1])
    if not (test(low) and test(high)):
        raise CausalSpritesError(
            f"range of {node} [{low:g}, {high:g}] is outside what the renderer draws: "
            f"{node} {wanted}"
        )
    return Factor(node, "continuous", low=low, high=high, unit=str(entry.get("unit", "")))


def continuous_schema(name: str, factors: Mapping[str, Factor]) -> Schema:
    """dSprites' schema with the given factors continuous, named after the variant."""
    columns = tuple(factors.get(f.name, f) for f in DSPRITES.factors)
    return Schema(name, columns, DSPRITES.image_shape, binary=True)


def parse_sigmoid(
    node: str, entry: Mapping[str, Any], parents: tuple[str, ...], schema: Schema
) -> Sigmoid:
    """A continuous factor's `sigmoid` (`intercept` default 0, `noise_scale` > 0 default 1, one
    `weights` entry per edge into it: a number for a continuous parent, a list of one number per
    class for a categorical one) over its range in `schema`."""
    raw = entry.get("sigmoid")
    if not isinstance(raw, Mapping):
        raise CausalSpritesError(
            f"continuous factor {node} needs a sigmoid: {{intercept, weights, noise_scale}}"
        )
    unknown = sorted(set(raw) - SIGMOID_KEYS)
    if unknown:
        raise CausalSpritesError(
            f"sigmoid of {node} has unknown keys {', '.join(map(str, unknown))}; "
            f"keys are {', '.join(sorted(SIGMOID_KEYS))}"
        )
    intercept, noise_scale = raw.get("intercept", 0.0), raw.get("noise_scale", 1.0)
    if not (_is_number(intercept) and math.isfinite(intercept)):
        raise CausalSpritesError(f"intercept of {node} must be a number, got {intercept!r}")
    if not (_is_number(noise_scale) and math.isfinite(noise_scale) and noise_scale > 0):
        raise CausalSpritesError(f"noise_scale of {node} must be a number > 0, got {noise_scale!r}")
    given = raw.get("weights") or {}
    if not isinstance(given, Mapping):
        raise CausalSpritesError(f"weights of {node} must map each parent to its weight")
    for name in given:
        if name not in schema.names:
            raise CausalSpritesError(
                f"unknown parent {name!r} in the weights of {node}; factors are "
                f"{', '.join(schema.names)}"
            )
    if sorted(given) != sorted(parents):
        raise CausalSpritesError(
            f"weights of {node} name [{', '.join(map(str, given))}] but the edges into it are "
            f"[{', '.join(parents)}]"
        )
    weights = {p: _weight(node, schema.factor(p), given[p]) for p in parents}
    low, high = _range(schema.factor(node))
    return Sigmoid(low, high, float(intercept), weights, float(noise_scale))


def _weight(node: str, parent: Factor, raw: Any) -> Weight:
    """A parent's weight: a number, or a list of one number per class of a categorical parent."""
    if parent.kind == "continuous":
        if not (_is_number(raw) and math.isfinite(raw)):
            raise CausalSpritesError(
                f"weight of {parent.name} in {node} must be a number ({parent.name} is "
                f"continuous), got {raw!r}"
            )
        return float(raw)
    if not (
        isinstance(raw, list | tuple)
        and len(raw) == parent.size
        and all(_is_number(v) and math.isfinite(v) for v in raw)
    ):
        raise CausalSpritesError(
            f"weights of {parent.name} in {node} must be a list of {parent.size} numbers, one per "
            f"class ({', '.join(parent.classes[:6])}{', ...' if parent.size > 6 else ''}), "
            f"got {raw!r}"
        )
    return tuple(float(v) for v in raw)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
