"""The report's tables: a table for the template, cells formatted as the page shows them, and a
run's metrics (nested dicts, per-factor entries) flattened into tables."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Table:
    """A table for the template: column titles and rows of formatted cells."""

    columns: list[str]
    rows: list[list[str]]


def fmt(value: Any) -> str:
    """A cell: floats to 4 significant digits, {name: number} as `name 0.5, other 2` (a metric
    per descendant), everything else as text."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {fmt(inner)}" for key, inner in value.items())
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def metric_tables(scores: Mapping[str, Any], names: Sequence[str]) -> tuple[Table, Table | None]:
    """Metrics as two tables: scalars (nested dicts flattened as `a.b`), and one row per metric
    given per factor of `names` ({factor: value}, or {factor: {metric: value}}), with its
    overall value, when there is one, in an `overall` column; a metric that is None for every
    factor (IoU on images that are not binary) is left out."""
    scalars: dict[str, Any] = {}
    per_factor: dict[str, dict[str, Any]] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value and set(value) <= {*names, "overall"}:
            if all(isinstance(v, Mapping) for v in value.values()):
                for factor, metrics in value.items():
                    for name, v in metrics.items():
                        per_factor.setdefault(name, {})[factor] = v
            else:
                per_factor.setdefault(prefix, {}).update(value)
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            scalars[prefix] = value

    visit("", scores)
    for name, row in per_factor.items():
        if name in scalars and "overall" not in row:
            row["overall"] = scalars.pop(name)
    cells = Table(["metric", "value"], [[k, _cell(v)] for k, v in scalars.items()])
    if not per_factor:
        return cells, None
    columns = [c for c in (*names, "overall") if any(c in row for row in per_factor.values())]
    rows = [
        [name, *(fmt(row.get(c, "")) for c in columns)]
        for name, row in per_factor.items()
        if any(v is not None for v in row.values())
    ]
    return cells, Table(["metric", *columns], rows)


def _cell(value: Any) -> str:
    """A scalar, names joined by commas, or a numeric array-like as a short JSON list."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return fmt(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(np.asarray(value).round(4).tolist())
