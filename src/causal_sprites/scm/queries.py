"""Queries on a trained run: the VAE's reconstructions and edits, and the structural causal model's
conditioning, interventions and counterfactuals (abduction, action, prediction: Pearl 2009, ch. 7),
with Gumbel-max factors (Oberst & Sontag 2019) and ChiRho's twin-world counterfactual handlers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from chirho.counterfactual.handlers import TwinWorldCounterfactual
from chirho.interventional.handlers import do as chirho_do
from pyro import poutine
from torch import Tensor

from causal_sprites.config import RunConfig
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import (
    DRAW_TOP,
    FactorPosterior,
    SearchBudget,
    infer_posterior,
    refusal,
    run_budget,
    weak_readout,
)
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.progress import progress_bar
from causal_sprites.runs import load_model, read_likelihood_range, resolve_run
from causal_sprites.runtime import choose_device
from causal_sprites.scm import distribution, sampling, support
from causal_sprites.scm.abduction import REFINE_STEPS, abduct_noise, pixel_noise_rule
from causal_sprites.scm.graph import FactorGraph, marginals, restrict
from causal_sprites.scm.inputs import (
    Interventions,
    Method,
    PixelNoise,
    Style,
    Value,
    as_images,
    as_interventions,
    as_labels,
    as_user,
    check_count,
    seeded,
    site_to_user,
)
from causal_sprites.scm.results import (
    Abduction,
    CounterfactualResult,
)
from causal_sprites.scm.structural import CHUNK, StructuralModel, world_slice


class CausalModel:
    """A trained run: the conditional VAE and the SCM over its exogenous noise."""

    def __init__(
        self,
        model: ConditionalVAE,
        config: RunConfig,
        run_dir: Path | None = None,
        progress: bool = False,
    ):
        self.model = model
        self.config = config
        self.run_dir = run_dir
        self.scm = StructuralModel(model)
        #: The factors of the data the run was trained on.
        self.schema = model.schema
        self.likelihood_range = None if run_dir is None else read_likelihood_range(run_dir)
        self.weak_readout = weak_readout(self.likelihood_range)
        #: How far reading factors off pixels searches (`model/readout.py`).
        self.search_budget = run_budget(self.likelihood_range)
        self.progress = progress  # a bar on a terminal while reading many images

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def infer(
        self, x: np.ndarray | Tensor, top: int = 5, budget: SearchBudget | None = None
    ) -> FactorPosterior:
        """The posterior p(y | x) over factor tuples of images (B, 64, 64), its `top` most
        probable first: the classifier proposes, the decoder decides (`model/readout.py`),
        within `budget` (default: the run's `search_budget`)."""
        if top < 1:
            raise CausalSpritesError(f"top must be >= 1, got {top}")
        images = as_images(x, self.schema)
        budget = budget or self.search_budget
        deadline = None if budget.max_seconds is None else time.monotonic() + budget.max_seconds
        parts: list[FactorPosterior] = []
        with progress_bar("reading factors", self.progress and len(images) > CHUNK) as update:
            for start in range(0, len(images), CHUNK):
                chunk = images[start : start + CHUNK].to(self.device)
                parts.append(infer_posterior(self.model, chunk, top, budget, deadline))
                update(start + len(chunk), len(images))
        return FactorPosterior.concatenate(parts)

    def infer_labels(self, x: np.ndarray | Tensor) -> np.ndarray:
        """The most probable factor classes (B, 5) of images (B, 64, 64): the posterior's mode."""
        return self.infer(x, top=1).mode

    def out_of_distribution(self, posterior: FactorPosterior) -> np.ndarray:
        """(B,) bool: images far worse explained than held-out ones (RUN/likelihood.json)."""
        if self.likelihood_range is None:
            return np.zeros(len(posterior.log_likelihood), dtype=bool)
        return posterior.log_likelihood < self.likelihood_range["threshold"]

    def unexplained(self, posterior: FactorPosterior, row: int) -> str | None:
        """Why image `row` gets no counterfactual (no factor tuple explains it), or None."""
        usual = self.likelihood_range
        if usual is None or not self.out_of_distribution(posterior)[row]:
            return None
        return refusal(row, float(posterior.log_likelihood[row]), usual, self.schema.name)

    def refuse_out_of_distribution(self, posterior: FactorPosterior) -> None:
        """Raise a one-line error naming the first image no factor tuple explains."""
        for row in range(len(posterior.log_likelihood)):
            refusal = self.unexplained(posterior, row)
            if refusal is not None:
                raise CausalSpritesError(refusal)

    @torch.no_grad()
    def encode(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None) -> Tensor:
        """Posterior means (B, z_dim) of q(z | x, y); labels from the classifier when y is None."""
        images = as_images(x, self.schema)
        labels = as_labels(
            self.infer_labels(as_user(images)) if y is None else y, len(images), self.schema
        )
        codes = []
        for start in range(0, len(images), CHUNK):
            chunk = slice(start, start + CHUNK)
            posterior = self.model.z_posterior(
                images[chunk].to(self.device), labels[chunk].to(self.device)
            )
            codes.append(posterior.mean.cpu())
        return torch.cat(codes)

    @torch.no_grad()
    def decode_params(self, y: np.ndarray | Tensor, z: Tensor) -> Tensor:
        """The image mechanism's parameters of p(x | y, z): pixel probabilities (B, 64, 64) on
        dSprites, else the likelihood's (B, P * C, H, W)."""
        labels = as_labels(y, len(z), self.schema)
        out = []
        for start in range(0, len(z), CHUNK):
            chunk = slice(start, start + CHUNK)
            params = self.model.mechanism_params(
                labels[chunk].to(self.device), z[chunk].to(self.device)
            )
            out.append(params.cpu())
        return torch.cat(out)

    def decode(self, y: np.ndarray | Tensor, z: Tensor) -> np.ndarray:
        """The most likely image of p(x | y, z), uint8 as users hold images ((B, 64, 64) on
        dSprites: pixels with p > 1/2)."""
        params = self.decode_params(y, z)
        if self.model.likelihood is None:
            return (params > 0.5).numpy().astype(np.uint8)
        return self.user_images(self.model.likelihood.mode(params)).numpy()

    def user_images(self, x: Tensor) -> Tensor:
        """Images of the image site (..., *x_event) as users hold them (`site_to_user`)."""
        return site_to_user(x, channels_first=self.model.likelihood is not None)

    def reconstruct_with_codes(
        self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions (B, 64, 64) uint8 and the posterior means (B, z_dim) behind them."""
        images = as_images(x, self.schema)
        labels = (
            self.infer_labels(as_user(images))
            if y is None
            else as_labels(y, len(images), self.schema)
        )
        z = self.encode(as_user(images), labels)
        return self.decode(labels, z), z.numpy()

    def reconstruct(
        self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None
    ) -> np.ndarray:
        """Encode (posterior mean z) and decode: (B, 64, 64) uint8."""
        return self.reconstruct_with_codes(x, y)[0]

    def edit(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        set_factors: Mapping[str, str | int] | None = None,
    ) -> np.ndarray:
        """Decode the same z with some labels changed by hand ("same sprite, but a heart")."""
        images = as_images(x, self.schema)
        labels = torch.as_tensor(
            self.infer_labels(as_user(images))
            if y is None
            else as_labels(y, len(images), self.schema)
        ).clone()
        z = self.encode(as_user(images), labels)
        for name, value in self.schema.classes(set_factors or {}).items():
            labels[:, self.schema.index(name)] = value
        return self.decode(labels, z)

    # -- the structural causal model -----------------------------------------------------------
    @property
    def factor_graph(self) -> FactorGraph:
        """The model's factor SCM: its graph and learned tables."""
        return self.model.factors.exact()

    def posterior(self, evidence: Mapping[str, Value] | None = None) -> dict[str, np.ndarray]:
        """Exact marginals p(factor | evidence) {factor: (K,)}: the factor network enumerated."""
        given = self.schema.classes(evidence or {})
        names = self.schema.names
        return marginals(restrict(self.factor_graph.log_joint(), given, names), names)

    #: Samples of p(x | evidence) and of p(x | do(...)) with their factors' answers:
    #: `scm/sampling.py`'s functions, as methods.
    condition_query = sampling.condition_query
    intervene_query = sampling.intervene_query

    def condition(
        self,
        evidence: Mapping[str, Value] | None = None,
        num_samples: int = 16,
        seed: int | None = None,
    ) -> np.ndarray:
        """Images (N, 64, 64) uint8 sampled given factor values, e.g. {"scale": 5}."""
        return self.condition_query(evidence, num_samples, seed).images

    def intervene(
        self, do: Mapping[str, Value], num_samples: int = 16, seed: int | None = None
    ) -> np.ndarray:
        """Images (N, 64, 64) uint8 sampled under do(...), e.g. {"posX": 31}."""
        return self.intervene_query(do, num_samples, seed).images

    @torch.no_grad()
    def abduct(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        num_samples: int = 1,
        method: Method = "exact",
        style: Style = "mean",
        refine_steps: int = REFINE_STEPS,
        seed: int | None = None,
        pixel_noise: PixelNoise | None = None,
    ) -> Abduction:
        """The noise posterior given images (B, H, W) or (B, H, W, C) and labels (B, K) (None:
        the mode of the posterior p(y | x); out-of-distribution images are refused), `exact` or
        `generic`, each pixel's noise drawn or its median (`scm/abduction`)."""
        check_count(num_samples)
        if method not in ("exact", "generic"):
            raise CausalSpritesError(f"unknown method {method!r}; use exact or generic")
        if style not in ("mean", "sample"):
            raise CausalSpritesError(f"unknown style {style!r}; use mean or sample")
        rule = pixel_noise_rule(self.model, pixel_noise, num_samples)
        images = as_images(x, self.schema).to(self.device)
        with seeded(seed):
            features = self.model.features(images)
            if y is None:
                posterior = self.infer(as_user(images).cpu(), top=1)
                self.refuse_out_of_distribution(posterior)
                labels = torch.as_tensor(posterior.mode, device=self.device)
            else:
                labels = as_labels(y, len(images), self.schema).to(self.device)
            noise, z, probs = abduct_noise(
                self.scm, images, labels, features, num_samples, method, style, refine_steps, rule
            )
        return Abduction(noise, labels, y is None, z, probs)

    @torch.no_grad()
    def predict(
        self, abduction: Abduction, do: Interventions | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Action and prediction: the SCM with its noise fixed to the abducted values
        (pyro.condition) under ChiRho's `do` in twin worlds; returns the factual and the
        counterfactual world, each {site: (S, B, ...)}."""
        num_samples, batch = abduction.noise["u_x"].shape[:2]
        actions = {
            name: value.to(self.device).expand(num_samples, batch)
            for name, value in as_interventions(do, batch, self.schema).items()
        }
        with (
            self.scm.reusing(abduction.labels, abduction.z, abduction.probs),
            TwinWorldCounterfactual(),
        ):
            model = chirho_do(poutine.condition(self.scm, data=abduction.noise), actions=actions)
            values = model(batch, num_samples)
            worlds = tuple(
                {
                    name: world_slice(
                        name, value, world, (num_samples, batch), len(self.model.x_event)
                    )
                    for name, value in values.items()
                }
                for world in (0, 1)
            )
        return worlds[0], worlds[1]

    def counterfactual_query(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        do: Interventions | None = None,
        num_samples: int = 1,
        method: Method = "exact",
        style: Style = "mean",
        refine_steps: int = REFINE_STEPS,
        seed: int | None = None,
        posterior: FactorPosterior | None = None,
        pixel_noise: PixelNoise | None = None,
    ) -> CounterfactualResult:
        """Abduction, action, prediction for images (B, 64, 64), with do values by name or
        index, shared or one per image. Labels (B, 5), or None: the factors are then latent, read
        off the pixels by the posterior p(y | x) (`posterior`, when the caller has it already):
        one answer abducts from its mode, `num_samples` answers from as many draws of it
        (out-of-distribution images are refused). `pixel_noise`: `abduction.pixel_noise_rule`."""
        start = time.perf_counter()
        check_count(num_samples)
        pixel_noise = pixel_noise_rule(self.model, pixel_noise, num_samples)
        images = as_images(x, self.schema)
        actions = as_interventions(do, len(images), self.schema)
        inferred = y is None
        if y is None:
            if posterior is None:
                posterior = self.infer(as_user(images), top=DRAW_TOP)
            self.refuse_out_of_distribution(posterior)
            if num_samples > 1:
                return self._counterfactual_over_posterior(
                    as_user(images),
                    posterior,
                    actions,
                    num_samples,
                    method,
                    style,
                    seed,
                    start,
                    pixel_noise,
                )
            y = posterior.mode
        labels = as_labels(y, len(images), self.schema)
        step = max(1, CHUNK // num_samples)
        outs, factual, counterfactual = [], [], []
        with seeded(seed):
            for first in range(0, len(images), step):
                rows = slice(first, first + step)
                abduction = self.abduct(
                    as_user(images[rows]),
                    None if labels is None else labels[rows],
                    num_samples,
                    method,
                    style,
                    refine_steps,
                    pixel_noise=pixel_noise,
                )
                _, world = self.predict(abduction, {k: v[rows] for k, v in actions.items()})
                outs.append(self.user_images(world["x"]))
                factual.append(abduction.labels.cpu())
                counterfactual.append(torch.stack([world[n] for n in self.schema.names], -1).cpu())
        cf_images, cf_classes = torch.cat(outs, 1), torch.cat(counterfactual, 1)
        if num_samples == 1:
            cf_images, cf_classes = cf_images[0], cf_classes[0]
        return CounterfactualResult(
            cf_images.numpy(),
            torch.cat(factual).numpy(),
            cf_classes.numpy(),
            inferred,
            time.perf_counter() - start,
        )

    def _counterfactual_over_posterior(
        self,
        images: Tensor,
        posterior: FactorPosterior,
        actions: dict[str, Tensor],
        num_samples: int,
        method: Method,
        style: Style,
        seed: int | None,
        start: float,
        pixel_noise: PixelNoise,
    ) -> CounterfactualResult:
        """`num_samples` counterfactuals of each image (B, 64, 64), each abducted from its own
        draw of the factor posterior: (S, B, ...) results."""
        draws = posterior.sample(num_samples, np.random.default_rng(seed))  # (S, B, 5)
        batch = len(images)
        result = self.counterfactual_query(
            images.repeat(num_samples, *[1] * (images.dim() - 1)),
            draws.reshape(-1, len(self.schema.names)),
            {name: value.repeat(num_samples) for name, value in actions.items()},
            method=method,
            style=style,
            seed=seed,
            pixel_noise=pixel_noise,
        )
        return CounterfactualResult(
            result.images.reshape(num_samples, batch, *result.images.shape[1:]),
            posterior.mode,
            result.counterfactual.reshape(num_samples, batch, len(self.schema.names)),
            True,
            time.perf_counter() - start,
        )

    def counterfactual(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        do: Interventions | None = None,
        num_samples: int = 1,
        method: Method = "exact",
        seed: int | None = None,
    ) -> np.ndarray:
        """Counterfactual images (B, 64, 64) uint8 of x under do(...), or (S, B, 64, 64) samples
        of the spread over the abducted noise; do(y = observed y) returns x pixel for pixel."""
        return self.counterfactual_query(x, y, do, num_samples, method, seed=seed).images

    #: The counterfactual of each image as a distribution over factor tuples, with one image
    #: each and the per-pixel probability: `scm/distribution.py`'s function, as a method.
    counterfactual_distribution = distribution.counterfactual_distribution
    #: Warnings for counterfactual factors outside the training data (`scm/support.py`).
    support_warnings = support.support_warnings


def load_run(
    run: str | Path, device: str | torch.device = "cpu", progress: bool = False
) -> CausalModel:
    """The trained VAE + SCM of a run directory (`pretrained`: the one shipped with the package);
    `progress` shows a bar on a terminal while factors are read off many images."""
    chosen = device if isinstance(device, torch.device) else choose_device(device)
    model, config = load_model(run, chosen)
    return CausalModel(model, config, resolve_run(run), progress)
