"""Factor-level answers where a factor is continuous: draws of the factor SCM (its mechanisms
with fresh noise) under do(), or given evidence by rejection (a continuous factor within a range,
or within a tolerance of a value), and what they say per factor (class frequencies; a continuous
factor's mean, spread and quantiles), labelled with the number of draws behind them. Where every
factor is categorical the queries enumerate the factor network exactly instead (`scm/graph.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import torch
from torch import Tensor

from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE

#: Evidence `name=value` on a continuous factor holds within this fraction of its range, either
#: side (a value itself has probability zero); `name=low..high` gives the range itself.
TOLERANCE: Final = 0.01
#: Factor rows drawn per round of rejection, and in all at most.
DRAWS: Final = 20_000
MAX_DRAWS: Final = 2_000_000
#: Quantiles of a continuous factor's summary.
QUANTILES: Final = (0.05, 0.25, 0.5, 0.75, 0.95)

#: A categorical factor's class, or a continuous factor's closed range.
Evidence = dict[str, int | tuple[float, float]]


def parse_evidence(schema: Schema, items: Sequence[str]) -> Evidence:
    """`name=value` strings as evidence: a class; a continuous value within TOLERANCE of its
    range either side, or `name=low..high` (both within the factor's range)."""
    evidence: Evidence = {}
    ranges = [item for item in items if ".." in item.partition("=")[2]]
    for item in ranges:
        name, _, text = item.partition("=")
        name = name.strip()
        factor = schema.factor(name)
        if factor.kind != "continuous":
            raise CausalSpritesError(f"a range is for continuous factors; {name!r} has classes")
        low, _, high = text.partition("..")
        bounds = (float(schema.parse_value(name, low)), float(schema.parse_value(name, high)))
        if bounds[0] > bounds[1]:
            raise CausalSpritesError(f"empty range {text!r} for {name}")
        evidence[name] = bounds
    for name, value in schema.parse_assignments([i for i in items if i not in ranges]).items():
        factor = schema.factor(name)
        if name in evidence:
            raise CausalSpritesError(f"factor {name!r} is given twice")
        if factor.kind == "continuous":
            assert factor.low is not None and factor.high is not None
            width = TOLERANCE * (factor.high - factor.low)
            evidence[name] = (max(value - width, factor.low), min(value + width, factor.high))
        else:
            evidence[name] = int(value)
    return evidence


def parse_evidence_of(schema: Schema, evidence: Mapping[str, object]) -> Evidence:
    """Evidence as the API takes it: {name: value or (low, high)} (a value as `parse_evidence`
    reads `name=value`, so a continuous value holds within TOLERANCE)."""
    ranges = {n: v for n, v in evidence.items() if isinstance(v, tuple)}
    items = [f"{n}={v}" for n, v in evidence.items() if n not in ranges]
    items += [f"{n}={low}..{high}" for n, (low, high) in ranges.items()]
    return parse_evidence(schema, items)


def evidence_text(evidence: Mapping[str, int | tuple[float, float]], schema: Schema) -> str:
    """Evidence as a reader writes it: `shape=heart, angle in [10, 12]`."""
    parts = []
    for name, value in evidence.items():
        if isinstance(value, tuple):
            parts.append(f"{name} in [{value[0]:g}, {value[1]:g}]")
        else:
            parts.append(f"{name}={schema.factor(name).text(value)}")
    return ", ".join(parts)


def holds(rows: Tensor, evidence: Evidence, schema: Schema) -> Tensor:
    """(N,) bool: the rows (N, K) that satisfy the evidence."""
    keep = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    for name, value in evidence.items():
        column = rows[:, schema.index(name)]
        if isinstance(value, tuple):
            keep &= (column >= value[0]) & (column <= value[1])
        else:
            keep &= column == value
    return keep


@torch.no_grad()
def draw_given(vae: ConditionalVAE, evidence: Evidence, num: int = DRAWS) -> Tensor:
    """At least `num` factor rows (M, K) of p(y | evidence), by rejection from the factor SCM;
    an event too rare to meet within MAX_DRAWS draws is a one-line error."""
    accepted: list[Tensor] = []
    drawn = found = 0
    while found < num:
        if drawn >= MAX_DRAWS:
            raise CausalSpritesError(
                f"the evidence {evidence_text(evidence, vae.schema)} is too rare under the "
                f"model: {found} of {drawn:,} draws meet it; widen it"
            )
        rows = vae.sample_factors(DRAWS)
        accepted.append(rows[holds(rows, evidence, vae.schema)])
        drawn, found = drawn + DRAWS, found + len(accepted[-1])
    return torch.cat(accepted)


@torch.no_grad()
def draw_under(vae: ConditionalVAE, do: Mapping[str, Tensor], num: int = DRAWS) -> Tensor:
    """`num` factor rows (num, K) of p(y | do(...)) from the factor SCM."""
    return vae.sample_factors(num, do)


def summarise(rows: Tensor, schema: Schema) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """What factor rows (M, K) drawn from an answer say: each categorical factor's class
    frequencies (K,), and each continuous factor's mean, sd and quantiles (and `draws`: M)."""
    frequencies: dict[str, np.ndarray] = {}
    continuous: dict[str, dict] = {}
    values = rows.double().cpu().numpy()
    for i, factor in enumerate(schema.factors):
        column = values[:, i]
        if factor.kind == "categorical":
            counts = np.bincount(column.astype(np.int64), minlength=factor.size)
            frequencies[factor.name] = counts / counts.sum()
        else:
            quantiles = np.quantile(column, QUANTILES).tolist()
            named = {f"q{round(100 * q):02d}": v for q, v in zip(QUANTILES, quantiles, strict=True)}
            continuous[factor.name] = {
                "mean": float(column.mean()),
                "sd": float(column.std()),
                **named,
                "draws": len(column),
            }
    return frequencies, continuous
