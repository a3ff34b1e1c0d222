"""The rows of a dataset by factor combination, for data that holds every combination (dSprites,
3dshapes, MPI3D, a rendered grid): the images a causal variant's samples are drawn from, and the
true images of its counterfactuals (disentanglement_lib's `sample_observations_from_factors`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError

#: Extra arrays of a dataset that record factor-level facts, not an image's nuisance: a causal
#: variant's noise (`noise_<factor>`, by prefix), its spec and the base row of each sample.
FACTOR_LEVEL: Final = ("noise_", "spec", "base_row")


def nuisance_arrays(data: DSprites | Dataset) -> dict[str, np.ndarray]:
    """The data's per-row extra arrays (N, ...) that are not factor-level: what it recorded of
    each image beyond its factors, such as a background's brightness."""
    extra: Mapping[str, np.ndarray] = data.extra if isinstance(data, Dataset) else {}
    return {
        key: np.asarray(values)
        for key, values in extra.items()
        if not key.startswith(FACTOR_LEVEL) and np.ndim(values) >= 1 and len(values) == len(data)
    }


@dataclass(frozen=True, eq=False)
class Combinations:
    """Rows of a dataset grouped by factor combination: the rows of combination k are
    `order[starts[k] : starts[k] + counts[k]]` (k = `np.ravel_multi_index` of the classes over
    `sizes`), each row's recorded `nuisance` beside them."""

    sizes: tuple[int, ...]
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    nuisance: dict[str, np.ndarray]

    @classmethod
    def of(cls, data: DSprites | Dataset, schema: Schema, where: str) -> Combinations:
        """The index of `data`, whose factors must be `schema`'s, every combination present
        (one-line errors naming `where` and how many combinations are missing)."""
        if data.schema.names != schema.names or data.schema.sizes != schema.sizes:
            raise CausalSpritesError(
                f"{where} has the factors {', '.join(data.schema.names)} "
                f"{list(data.schema.sizes)}, not {', '.join(schema.names)} {list(schema.sizes)}"
            )
        factors = np.asarray(data.factors(slice(None)), np.int64)
        sizes, total = schema.sizes, math.prod(schema.sizes)
        if total > len(factors):
            missing = total - len(np.unique(factors, axis=0))
            raise CausalSpritesError(f"{where}: {_missing(missing, total)}")
        keys = np.ravel_multi_index(factors.T, sizes)
        counts = np.bincount(keys, minlength=total)
        absent = np.flatnonzero(counts == 0)
        if len(absent):
            example = np.unravel_index(absent[0], sizes)
            named = ", ".join(
                f"{f.name}={f.text(int(v))}" for f, v in zip(schema.factors, example, strict=True)
            )
            raise CausalSpritesError(f"{where}: {_missing(len(absent), total, f' (e.g. {named})')}")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(sizes, np.argsort(keys, kind="stable"), starts, counts, nuisance_arrays(data))

    def _keys(self, classes: np.ndarray) -> np.ndarray:
        return np.asarray(np.ravel_multi_index(np.asarray(classes, np.int64).T, self.sizes))

    def pick(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One row (N,) per class tuple (N, K), uniformly among the rows with those classes."""
        keys = self._keys(classes)
        return self.order[self.starts[keys] + rng.integers(0, self.counts[keys])]

    def candidates(self, classes: np.ndarray, like: np.ndarray | None = None) -> list[np.ndarray]:
        """Per class tuple (B, K), the rows with those classes; with `like` (B,) rows, only
        those whose recorded nuisance equals row like[b]'s, where there are any."""
        out = []
        for b, key in enumerate(self._keys(classes)):
            rows = self.order[self.starts[key] : self.starts[key] + self.counts[key]]
            if like is not None and self.nuisance:
                same = np.ones(len(rows), dtype=bool)
                for values in self.nuisance.values():
                    same &= (values[rows] == values[like[b]]).reshape(len(rows), -1).all(1)
                rows = rows[same] if same.any() else rows
            out.append(rows)
        return out


def _missing(missing: int, total: int, example: str = "") -> str:
    return (
        f"{missing:,} of its {total:,} factor combinations are missing{example}; a causal "
        "variant needs every combination in its base dataset, to draw its samples and their "
        "true counterfactuals"
    )
