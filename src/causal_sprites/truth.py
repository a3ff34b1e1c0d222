"""The exact answer of a counterfactual where a data set's generator is known: its rows' true
counterfactual factors and images under any do(), the yardstick `evaluate --counterfactual` and
`benchmark` measure models against. One interface (`Truth`) over the data sets that record
their generator's noise; `truth_of` finds the one a data set has."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from causal_sprites.data import pendulum
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


@dataclass(frozen=True)
class PendulumTruth:
    """The pendulum (`data/pendulum.py`): the shadow's recorded noise and the scene's geometry
    give every counterfactual exactly, rendered by the same rasteriser."""

    data: Any

    @property
    def schema(self) -> Schema:
        return self.data.schema

    def counterfactual(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        noise = {key: self.data.extra[key][rows] for key in pendulum.NOISE_KEYS.values()}
        return pendulum.true_counterfactual(self.data.factors(rows), noise, do, self.schema)


def truth_of(data: Any) -> Truth | None:
    """The known truth of a loaded data set, None where its generator is not known (a
    categorical variant or dSprites is scored by `counterfactual_scores` instead)."""
    extra = getattr(data, "extra", {})
    if data.schema.name == "pendulum" and all(k in extra for k in pendulum.NOISE_KEYS.values()):
        return PendulumTruth(data)
    return None
