"""What `benchmark` scores: any object with a batched `counterfactual(images, factors, do)`
(`CounterfactualModel`), named on the command line as a run directory, `pretrained`, a built-in
contender that brackets the scores (`oracle`, `identity`, `resample`), the seed project's recipe
(`seed`, `benchmark_seed`) or a user's `package.module:factory`."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import torch
from chirho.interventional.handlers import do as chirho_do

from causal_sprites.benchmark_seed import SEED_QUERIES, SeedModel, is_seed_run, seed_run_missing
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.inputs import as_interventions, seeded
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.truth import Truth

#: Contenders built in, with what each is.
BUILT_IN: Final = {
    "oracle": "the truth itself (the upper bound)",
    "identity": "returns the input (perfect composition, no effectiveness)",
    "resample": "our model with fresh noise instead of abduction (an intervention)",
    "seed": "the baseline MLP VAE with z found by gradient steps (the seed's recipe)",
}


@runtime_checkable
class CounterfactualModel(Protocol):
    """A counterfactual image model as `benchmark` calls it; it may also have `infer(images)
    -> factors (B, K)`."""

    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """Counterfactual images of images (B, H, W) or (B, H, W, C) uint8 (0/1 on binary data)
        whose factors (B, K) are as the dataset's schema gives them (class index or value),
        under do {factor: values (B,)} (every image of a batch intervenes on the same factors;
        {} is the null intervention): images of the same shape, uint8."""
        ...


@dataclass
class RunModel:
    """A trained run of this package, answering by abduction, action, prediction."""

    run: CausalModel
    seed: int = 0

    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        return self.run.counterfactual(images, factors, do=dict(do), seed=self.seed)

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.run.infer_labels(images)


@dataclass
class ResampleModel:
    """A run with fresh noise instead of abduction: a draw of p(x | do(...)) per image, every
    exogenous noise (the other factors', the style's, the pixels') from the prior. An
    intervention posing as a counterfactual: what a model without abduction answers."""

    run: CausalModel
    seed: int = 0

    @torch.no_grad()
    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        run = self.run
        actions = as_interventions(do, len(images), run.schema)
        with seeded(self.seed):
            values = chirho_do(run.scm, actions={n: v.to(run.device) for n, v in actions.items()})(
                len(images)
            )
        return run.user_images(values["x"][0]).numpy()


@dataclass
class IdentityModel:
    """Returns its input: what a model that changes nothing scores."""

    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        return np.array(images, copy=True)


@dataclass
class TruthModel:
    """The truth itself (`truth.Truth`): it answers by the data row, not by the pixels."""

    truth: Truth

    def answer(self, rows: np.ndarray, do: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.truth.counterfactual(rows, do)[1]


@dataclass
class Contender:
    """A model under test: its name as given, what it is, and the model; `subset`: it answers
    only that many queries (a seeded subset, `benchmark_seed.subset_queries`), None: all."""

    name: str
    kind: str
    model: Any
    subset: int | None = None

    def answer(
        self,
        rows: np.ndarray,
        images: np.ndarray,
        factors: np.ndarray,
        do: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """The model's counterfactuals of these data rows' images (B, ...) and factors (B, K)."""
        if isinstance(self.model, TruthModel):
            return self.model.answer(rows, do)
        return self.model.counterfactual(images, factors, do)


def _check_schema(run: CausalModel, name: str, schema: Schema) -> None:
    """Refuse a run trained on other factors or images than the benchmark's data set."""
    theirs = run.schema
    if theirs.names != schema.names or theirs.image_shape != schema.image_shape:
        raise CausalSpritesError(
            f"--model {name} was trained on {theirs.name} (factors {', '.join(theirs.names)}), "
            f"not on the benchmark's {schema.name} (factors {', '.join(schema.names)})"
        )


def load_factory(spec: str, schema: Schema, device: str) -> Any:
    """The model `factory(schema, device)` of `package.module:factory` returns, resolved from
    the current directory as `python -m` would; one-line errors for each way it fails."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CausalSpritesError(f"bad --model {spec!r}: expected package.module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise CausalSpritesError(
            f"--model {spec}: cannot import {module_name} ({type(error).__name__}: {error})"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CausalSpritesError(f"--model {spec}: {module_name} has no callable {attribute}")
    try:
        model = factory(schema, device)
    except Exception as error:
        raise CausalSpritesError(
            f"--model {spec}: the factory raised {type(error).__name__}: {error}"
        ) from None
    if not callable(getattr(model, "counterfactual", None)):
        raise CausalSpritesError(
            f"--model {spec}: the factory returned an object of type {type(model).__name__}, "
            "which has no counterfactual(images, factors, do) method"
        )
    return model


def load_contenders(
    names: list[str],
    schema: Schema,
    truth: Truth,
    device: torch.device,
    seed: int = 0,
    seed_queries: int = SEED_QUERIES,
) -> list[Contender]:
    """The contenders `--model` names, in order: built-ins, `module:factory`, run directories
    or `pretrained`. `resample` resamples the first run named (else `pretrained` on dSprites);
    `seed` searches z with the first run named whose decoder is the MLP (none: an error), on
    `seed_queries` of the queries."""
    if not names:
        raise CausalSpritesError("name at least one --model")
    runs: dict[str, CausalModel] = {}

    def run_of(name: str) -> CausalModel:
        if name not in runs:
            runs[name] = load_run(name, device)
            _check_schema(runs[name], name, schema)
        return runs[name]

    out: list[Contender] = []
    for name in names:
        if names.count(name) > 1:
            raise CausalSpritesError(f"--model {name} is named twice")
        if name == "oracle":
            out.append(Contender(name, BUILT_IN[name], TruthModel(truth)))
        elif name == "identity":
            out.append(Contender(name, BUILT_IN[name], IdentityModel()))
        elif name in ("resample", "seed"):
            continue  # once every run is known
        elif ":" in name and not os.path.isdir(name):
            out.append(Contender(name, "user model", load_factory(name, schema, str(device))))
        else:
            out.append(Contender(name, "run", RunModel(run_of(name), seed)))
    if "seed" in names:
        base = next((n for n, run in runs.items() if is_seed_run(run)), None)
        if base is None:
            raise seed_run_missing(list(runs))
        kind = f"{base} {BUILT_IN['seed']}"
        out.append(Contender("seed", kind, SeedModel(runs[base], seed), seed_queries))
    if "resample" in names:
        first = next(iter(runs), None)
        if first is None and schema.name != DSprites.schema.name:
            raise CausalSpritesError(
                "--model resample needs a run among the models (it is that run with fresh noise)"
            )
        base = first or "pretrained"
        model = ResampleModel(run_of(base), seed)
        out.append(Contender("resample", f"{base} {BUILT_IN['resample']}", model))
    return sorted(out, key=lambda contender: names.index(contender.name))
