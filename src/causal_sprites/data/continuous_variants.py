"""Continuous causal variants of dSprites (issue 21): a `ContinuousSpec` (`data/continuous_spec.py`)
draws each sample's exogenous noise (U ~ Normal(0, 1) of a continuous factor, Gumbels of a
categorical one), computes the factors from it in topological order and renders the sprites at
those values (`render_values`). The dataset file records the noise and, in its schema, the spec,
so `ContinuousTruth` rebuilds from the file alone and renders any counterfactual exactly: the
intervened factors set, their descendants recomputed from the recorded noise, the rest kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from causal_sprites.data.continuous_spec import ContinuousSpec
from causal_sprites.data.dataset import chunk_rows, write_dataset
from causal_sprites.data.render import render_values
from causal_sprites.data.schema import Schema
from causal_sprites.data.variant_spec import parse_any
from causal_sprites.data.variants import NOISE_PREFIX
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.mechanisms import sample_gumbels

#: The schema's extra key that holds the spec (`ContinuousSpec.to_dict`): what marks the file.
SPEC_KEY: Final = "continuous_variant"

Do = Mapping[str, np.ndarray | float]


def sample_noise(spec: ContinuousSpec, num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Exogenous noise {factor: ...}, drawn factor by factor in schema order from a generator
    seeded with `seed`: Gumbels (N, K) float32 of a categorical factor (as categorical variants
    draw them), U (N,) float64 ~ Normal(0, 1) of a continuous one."""
    generator = torch.Generator().manual_seed(seed)
    return {
        f.name: (
            sample_gumbels((num_samples, f.size), generator)
            if f.kind == "categorical"
            else torch.randn(num_samples, generator=generator, dtype=torch.float64)
        ).numpy()
        for f in spec.schema.factors
    }


def _mechanism(
    spec: ContinuousSpec, name: str, values: Mapping[str, np.ndarray], noise: np.ndarray
) -> np.ndarray:
    """A factor (N,) float64 from its parents' values and its noise: the sigmoid of a
    continuous factor, the Gumbel-max of a categorical one (its class index)."""
    sigmoid = spec.sigmoids.get(name)
    if sigmoid is not None:
        return sigmoid.value(sigmoid.location(values, spec.schema), noise)
    classes = {p: torch.from_numpy(values[p].astype(np.int64)) for p in spec.parents[name]}
    chosen = spec.graph.mechanism(name, classes, torch.from_numpy(np.asarray(noise)))
    return chosen.numpy().astype(np.float64)


def solve(
    spec: ContinuousSpec,
    noise: Mapping[str, np.ndarray],
    do: Mapping[str, np.ndarray] | None = None,
    factual: np.ndarray | None = None,
) -> np.ndarray:
    """Factors (N, K) float64 of the noise {factor: (N, ...)}, factor by factor in topological
    order: set by `do` {factor: (N,)}; kept from `factual` (N, K) where given and no parent
    changed; else computed by its mechanism."""
    do = do or {}
    values: dict[str, np.ndarray] = {}
    changed = set(do)
    for name in spec.order:
        if name in do:
            values[name] = do[name]
        elif factual is not None and not changed & set(spec.parents[name]):
            values[name] = factual[:, spec.schema.index(name)]
        else:
            values[name] = _mechanism(spec, name, values, noise[name])
            changed.add(name)
    return np.stack([values[n] for n in spec.schema.names], axis=1).astype(np.float64)


def checked_do(schema: Schema, do: Do, num: int) -> dict[str, np.ndarray]:
    """do() values as (num,) float64 each (one value, or one per row): a continuous factor's
    within its range, a categorical one's a class index; one-line errors otherwise."""
    out = {}
    for name, value in do.items():
        factor = schema.factor(name)
        array = np.asarray(value, dtype=np.float64)
        if array.ndim > 1 or array.size not in (1, num):
            raise CausalSpritesError(f"do({name}) needs one value or one per row ({num})")
        array = np.broadcast_to(array.reshape(-1), (num,))
        if factor.kind == "continuous":
            assert factor.low is not None and factor.high is not None
            bad = ~((array >= factor.low) & (array <= factor.high))
            unit = f" {factor.unit}" if factor.unit else ""
            wanted = f"outside its range {factor.low:g}..{factor.high:g}{unit}"
        else:
            bad = ~np.isin(array, np.arange(factor.size))
            wanted = f"not a class of {name} (0..{factor.size - 1})"
        if bad.any():
            raise CausalSpritesError(f"do({name}={array[bad][0]:g}) is {wanted}")
        out[name] = array
    return out


def render_factors(schema: Schema, factors: np.ndarray) -> np.ndarray:
    """Images (N, 64, 64) uint8 0/1 of factor rows (N, 5) of a continuous variant: shape as its
    class, other categorical factors at their class's value on dSprites' grid, continuous ones
    at their value."""
    factors = np.asarray(factors, dtype=np.float64)
    values = [
        np.asarray(f.values)[column.astype(np.int64)] if f.kind == "categorical" else column
        for f, column in zip(schema.factors[1:], factors[:, 1:].T, strict=True)
    ]
    return render_values(factors[:, 0].astype(np.int64), *values)


def sample_continuous(spec: ContinuousSpec, out: Path | str) -> Path:
    """Sample the variant and write it atomically as a dataset file: binary images, the factors
    (a class index or a value), each factor's noise as `noise_<factor>` and the spec in the
    schema (`SPEC_KEY`). The same spec and seed give the same arrays."""
    out = Path(out)
    noise = sample_noise(spec, spec.num_samples, spec.seed)
    factors = solve(spec, noise)
    schema = replace(spec.schema, extra={SPEC_KEY: spec.to_dict()})
    step = chunk_rows(schema)
    chunks = (render_factors(schema, factors[i : i + step]) for i in range(0, len(factors), step))
    extra = {NOISE_PREFIX + name: values for name, values in noise.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_dataset(out, chunks, factors, schema, extra=extra)


@dataclass(frozen=True)
class ContinuousTruth:
    """A continuous variant's data set (`sample_continuous`) as a `truth.Truth`: its rows' true
    counterfactuals, and draws of its SCM under do() (the distributions' yardstick)."""

    data: Any
    spec: ContinuousSpec

    @classmethod
    def of(cls, data: Any) -> ContinuousTruth:
        """The truth of a loaded data set that holds a continuous variant's spec and noise."""
        where = f"{data.path}: " if getattr(data, "path", None) else ""
        try:
            spec = parse_any(data.schema.extra[SPEC_KEY])
        except CausalSpritesError as error:
            raise CausalSpritesError(f"{where}its recorded spec: {error}") from None
        if not isinstance(spec, ContinuousSpec) or spec.schema.factors != data.schema.factors:
            raise CausalSpritesError(f"{where}its recorded spec does not match its factors")
        for factor in spec.schema.factors:
            shape = (len(data), factor.size) if factor.kind == "categorical" else (len(data),)
            recorded = data.extra.get(NOISE_PREFIX + factor.name)
            if recorded is None or recorded.shape != shape:
                raise CausalSpritesError(
                    f"{where}the noise of {factor.name} is missing or not of shape {shape}"
                )
        return cls(data, spec)

    @property
    def schema(self) -> Schema:
        return self.data.schema

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        return self.spec.edges

    def counterfactual(self, rows: np.ndarray, do: Do) -> tuple[np.ndarray, np.ndarray]:
        """The true counterfactual factors (B, K) and images (B, 64, 64) of the rows (B,)
        under do({factor: a value or one per row})."""
        rows = np.asarray(rows)
        noise = {n: self.data.extra[NOISE_PREFIX + n][rows] for n in self.schema.names}
        values = checked_do(self.schema, do, len(rows))
        factors = solve(self.spec, noise, values, self.data.factors(rows))
        return factors, render_factors(self.schema, factors)

    def interventional(self, do: Mapping[str, float], num_samples: int, seed: int) -> np.ndarray:
        """Factors (N, K) drawn from the spec's SCM under do({factor: value}), fresh noise
        seeded with `seed`."""
        noise = sample_noise(self.spec, num_samples, seed)
        return solve(self.spec, noise, checked_do(self.schema, do, num_samples))
