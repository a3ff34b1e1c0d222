"""The data sets `benchmark` scores against, each with its exact counterfactuals behind the
`truth.Truth` interface: dSprites (the generator draws the counterfactual classes), a categorical
variant (its recorded noise, `data/variants.py`), a dataset holding every factor combination once
(its own image at the new factors), the pendulum (`truth.PendulumTruth`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from causal_sprites.data import pendulum
from causal_sprites.data.dsprites import DSprites, data_dir
from causal_sprites.data.load import load_data
from causal_sprites.data.render import render
from causal_sprites.data.schema import Schema
from causal_sprites.data.variants import (
    BASE_ROW,
    VariantSpec,
    abduct_noise,
    counterfactual_classes,
    load_spec,
    sample_variant,
    true_images,
    variant_of,
)
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import preserved_mask
from causal_sprites.scores import truth_rows
from causal_sprites.truth import Truth, truth_of

#: File suffixes read as a variant spec (generated once into the data directory).
SPEC_SUFFIXES: Final = (".yaml", ".yml", ".json")


def _with_do(schema: Schema, factual: np.ndarray, do: Mapping[str, np.ndarray]) -> np.ndarray:
    """Factor rows (B, K) with the intervened columns set to their values (B,)."""
    out = np.array(factual, dtype=np.float64)
    for name, values in do.items():
        out[:, schema.index(name)] = values
    return out


@dataclass(frozen=True)
class DSpritesTruth:
    """dSprites: factors are independent, so the counterfactual classes are the factual ones with
    do() applied, and the generator draws their image."""

    data: Any

    @property
    def schema(self) -> Schema:
        return self.data.schema

    def counterfactual(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        classes = _with_do(self.schema, self.data.factors(rows), do).astype(np.int64)
        return classes, render(classes)


@dataclass(frozen=True)
class VariantTruth:
    """A categorical variant: descendants of the intervened factors recomputed from each row's
    recorded noise (`data/variants.true_counterfactual`), one distinct do() tuple at a time."""

    data: Any
    spec: VariantSpec
    noise: Mapping[str, np.ndarray]

    @property
    def schema(self) -> Schema:
        return self.spec.schema

    def counterfactual(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        classes = self._classes(rows, do, {k: v[rows] for k, v in self.noise.items()})
        base_rows = None
        if self.spec.dataset is not None:
            base_rows = np.asarray(self.data.extra[BASE_ROW])[rows]
        return classes, true_images(self.spec, classes, base_rows)

    def posterior_classes(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray], seed: int
    ) -> np.ndarray:
        """Counterfactual classes (B, K) from noise drawn from its exact posterior given the
        rows' classes instead of the recorded noise: a perfect model's answer, one draw."""
        factual = np.asarray(self.data.factors(rows), np.int64)
        return self._classes(rows, do, abduct_noise(self.spec, factual, seed))

    def _classes(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray], noise: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """Counterfactual classes (B, K) of `rows` under per-row `do` with the rows' noise
        {factor: (B, K_f)}, one distinct do() tuple at a time."""
        factual = np.asarray(self.data.factors(rows), np.int64)
        names = list(do)
        if names:
            keys = np.stack([np.asarray(do[n], np.int64) for n in names], 1)
            unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        else:
            unique, inverse = np.zeros((1, 0), np.int64), np.zeros(len(rows), np.int64)
        classes = np.empty_like(factual)
        for j, values in enumerate(unique):
            chosen = inverse.reshape(-1) == j
            classes[chosen] = counterfactual_classes(
                self.spec,
                {k: v[chosen] for k, v in noise.items()},
                factual[chosen],
                {n: int(v) for n, v in zip(names, values, strict=True)},
            )
        return classes


@dataclass(frozen=True)
class CombinationTruth:
    """A dataset holding every factor combination exactly once: the true counterfactual is its
    own image at the factual classes with do() applied (independent factors)."""

    data: Any
    rows_of: np.ndarray

    @property
    def schema(self) -> Schema:
        return self.data.schema

    def counterfactual(
        self, rows: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        classes = _with_do(self.schema, self.data.factors(rows), do).astype(np.int64)
        keys = np.ravel_multi_index(classes.T, self.schema.sizes)
        return classes.astype(np.float64), self.data.images(self.rows_of[keys])


@dataclass(frozen=True)
class Known:
    """A data set with its truth, its true graph's edges and where it comes from (`source`)."""

    data: Any
    truth: Truth
    edges: tuple[tuple[str, str], ...]
    source: str

    @property
    def schema(self) -> Schema:
        return self.truth.schema

    def descendants(self, names: Sequence[str]) -> set[str]:
        """The factors downstream of `names` in the true graph (themselves excluded)."""
        schema = self.schema
        mask = np.isin(np.array(schema.names), list(names))[None]
        kept = preserved_mask(mask, self.edges, schema.names)[0]
        return {
            n for n, keep, hit in zip(schema.names, kept, mask[0], strict=True) if not (keep or hit)
        }

    def identified(self, names: Sequence[str]) -> bool:
        """Whether the image determines the counterfactual of do() on `names`: always but where
        a variant's stochastic mechanism sits downstream (its recorded noise is known only in
        distribution from the image)."""
        return not isinstance(self.truth, VariantTruth) or not self.descendants(names)


def _spec_data(path: Path) -> Path:
    """The variant file of a spec, sampled once into the data directory (named by its hash)."""
    spec = load_spec(path)
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
    out = data_dir() / "variants" / f"{spec.name}-{digest[:12]}.npz"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        sample_variant(spec, out)
    return out


def _pendulum_path() -> Path:
    """The default pendulum dataset file, generated once into the data directory."""
    out = data_dir() / "pendulum.npz"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        pendulum.write(out)
    return out


def known_data(dataset: str) -> Known:
    """The data set `--dataset` names (`dsprites`, `pendulum`, a variant spec, or a data file)
    with its truth; a data set without a known truth is refused in one line."""
    if dataset == "dsprites":
        dsprites = DSprites.load()
        return Known(dsprites, DSpritesTruth(dsprites), (), "dsprites")
    if dataset == "pendulum":
        path = _pendulum_path()
    else:
        path = Path(dataset)
        if not path.is_file():
            raise CausalSpritesError(
                f"unknown dataset {dataset!r}: expected dsprites, pendulum, a variant spec "
                "(.yaml, .json) or a dataset file"
            )
        if path.suffix.lower() in SPEC_SUFFIXES:
            path = _spec_data(path)
    data = load_data(path)
    variant = variant_of(path)
    if variant is not None:
        spec, noise = variant
        return Known(data, VariantTruth(data, spec, noise), spec.edges, str(path))
    generator = truth_of(data)
    if generator is not None:
        return Known(data, generator, generator.edges, str(path))
    if isinstance(data, DSprites):
        return Known(data, DSpritesTruth(data), (), str(path))
    if not data.schema.categorical:
        raise CausalSpritesError(
            f"{path}: no known truth (no recorded noise, and continuous factors): the benchmark "
            "needs dSprites, a variant, the pendulum or every factor combination once"
        )
    return Known(data, CombinationTruth(data, truth_rows(data, data.schema)), (), str(path))
