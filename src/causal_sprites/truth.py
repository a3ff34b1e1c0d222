"""The exact answer of a counterfactual where a data set's generator is known: its rows' true
counterfactual factors and images under any do() (`Truth`), and the generator's graph and draws
under do() (`KnownGenerator`), the yardsticks `evaluate --counterfactual` and `benchmark` measure
models against. `truth_of` finds the one a data set has."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from causal_sprites.data import continuous_variants, pendulum
from causal_sprites.data.schema import Schema


class Truth(Protocol):
    """A data set whose true counterfactuals are known image for image."""

    @property
    def schema(self) -> Schema:
        """The data set's schema (factor names, kinds, ranges, image shape)."""
        ...

    def counterfactual(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The true counterfactual factors (B, K) and images (B, *image_shape) uint8 of the data
        rows (B,) under do({factor: one value per row (B,)}): the intervened factors set, their
        descendants recomputed from the rows' recorded noise, the rest kept."""
        ...


class KnownGenerator(Truth, Protocol):
    """A `Truth` whose generator is known as a causal model: its graph, and fresh draws under
    any do() (what `evaluate --counterfactual` scores continuous data against)."""

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """The generator's graph: its (parent, child) pairs."""
        ...

    def interventional(self, do: Mapping[str, float], num_samples: int, seed: int) -> np.ndarray:
        """Factors (N, K) drawn from the generator under do({factor: value}) with fresh noise:
        the intervened factors set, the others drawn by their mechanisms."""
        ...


@dataclass(frozen=True)
class PendulumTruth:
    """The pendulum (`data/pendulum.py`): the shadow's recorded noise and the scene's geometry
    give every counterfactual exactly, rendered by the same rasteriser."""

    data: Any

    @property
    def schema(self) -> Schema:
        return self.data.schema

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        return pendulum.EDGES

    def counterfactual(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        noise = {key: self.data.extra[key][rows] for key in pendulum.NOISE_KEYS.values()}
        return pendulum.true_counterfactual(self.data.factors(rows), noise, do, self.schema)

    def interventional(self, do: Mapping[str, float], num_samples: int, seed: int) -> np.ndarray:
        """The angles uniform over their ranges and the shadow noise as `pendulum.sample` draws
        them (the data's `shadow_noise`), the shadow by the scene's formula; intervened factors
        set (a value outside its range is refused)."""
        values = {name: float(self.schema.parse_value(name, value)) for name, value in do.items()}
        columns = {pendulum.FACTOR_NAMES.index(name): value for name, value in values.items()}
        factors, noise = pendulum.sample(
            num_samples, float(self.schema.extra["shadow_noise"]), seed
        )
        for column, value in columns.items():  # the roots set before the shadow follows them
            factors[:, column] = value
        factors = pendulum.scene_factors(factors[:, 0], factors[:, 1], noise)
        for column, value in columns.items():  # and an intervened shadow factor set after
            factors[:, column] = value
        return factors


def truth_of(data: Any) -> KnownGenerator | None:
    """The known generator of a loaded data set (the pendulum, a continuous variant of
    dSprites), None where it is not known (a categorical variant or dSprites is scored by
    `counterfactual_scores` instead)."""
    extra = getattr(data, "extra", {})
    if data.schema.name == "pendulum" and all(k in extra for k in pendulum.NOISE_KEYS.values()):
        return PendulumTruth(data)
    if continuous_variants.SPEC_KEY in data.schema.extra:
        return continuous_variants.ContinuousTruth.of(data)
    return None
