"""Queries on a trained run: the VAE's reconstructions and edits, and the structural causal model's
conditioning, interventions and counterfactuals (abduction, action, prediction: Pearl 2009, ch. 7),
with Gumbel-max factors (Oberst & Sontag 2019) and ChiRho's twin-world counterfactual handlers."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from chirho.counterfactual.handlers import TwinWorldCounterfactual
from chirho.indexed.ops import IndexSet, gather, indices_of
from chirho.interventional.handlers import do as chirho_do
from pyro import poutine
from torch import Tensor
from torch.distributions import kl_divergence

from causal_sprites.config import RunConfig
from causal_sprites.data.factors import FACTORS, SIZES, normalize_assignments, parse_factor_value
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import FactorPosterior, infer_posterior
from causal_sprites.model.vae import ConditionalVAE, parents_of
from causal_sprites.runs import load_model, read_likelihood_range
from causal_sprites.scm.graph import FactorGraph
from causal_sprites.scm.mechanisms import (
    gumbel_max,
    gumbel_posterior,
    pixel_mechanism,
    pixel_noise_posterior,
)

CHUNK = 512
#: Factor tuples per image kept from the posterior to draw from (the rest weigh nothing here).
POSTERIOR_DRAW_TOP = 8
#: Event dims of the endogenous sites (factors are scalars per image).
EVENT_DIMS: dict[str, int] = {"z": 1, "x": 2}
#: Per-image ELBO steps on q(z | x, y) before abduction. 0: on the pretrained run 10 or 50 steps
#: left the counterfactual IoU against the true images unchanged (0.993 either way).
REFINE_STEPS = 0
REFINE_LR = 0.05
#: Pixels proposed per model run, and proposals per noise coordinate at most, in the generic
#: (rejection) abduction.
PROPOSAL_PIXELS = 2**21
MAX_PROPOSALS = 4096

Value = str | int
Interventions = Mapping[str, Value | Sequence[Value] | np.ndarray | Tensor]
Method = Literal["exact", "generic"]
Style = Literal["mean", "sample"]


def as_images(x: np.ndarray | Tensor) -> Tensor:
    """0/1 images (B, 64, 64) or (64, 64) -> float (B, 1, 64, 64); anything else is refused."""
    images = torch.as_tensor(np.asarray(x))
    if images.dim() == 2:
        images = images[None]
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3 or tuple(images.shape[1:]) != (64, 64):
        raise CausalSpritesError(f"images must have shape (B, 64, 64), got {tuple(images.shape)}")
    if not bool(((images == 0) | (images == 1)).all()):
        raise CausalSpritesError("images must be binary (0/1 pixels)")
    return images.float()[:, None]


def as_labels(y: np.ndarray | Tensor, batch: int) -> Tensor:
    """Factor classes (B, 5) or (B, 6) with color -> (B, 5) int64, range-checked."""
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if labels.dim() == 1:
        labels = labels[None]
    if labels.dim() != 2 or labels.shape[1] not in (5, 6):
        raise CausalSpritesError(f"labels must have shape (B, 5), got {tuple(labels.shape)}")
    labels = labels[:, -5:]
    if labels.shape[0] != batch:
        raise CausalSpritesError(f"{labels.shape[0]} labels for {batch} images")
    for i, (name, size) in enumerate(zip(FACTORS, SIZES, strict=True)):
        if bool(((labels[:, i] < 0) | (labels[:, i] >= size)).any()):
            raise CausalSpritesError(f"label for {name} out of range 0..{size - 1}")
    return labels


def as_interventions(do: Interventions | None, batch: int) -> dict[str, Tensor]:
    """do() values by name or index, one for all images or one per image -> {factor: (B,) int64}."""
    actions: dict[str, Tensor] = {}
    for name, value in (do or {}).items():
        given = np.asarray(value.cpu() if isinstance(value, Tensor) else value).reshape(-1)
        if given.size == 1:
            given = np.repeat(given, batch)
        if given.size != batch:
            raise CausalSpritesError(f"{given.size} values of {name} for {batch} images")
        unique, inverse = np.unique(given, return_inverse=True)
        classes = np.array([parse_factor_value(name, v) for v in unique.tolist()], dtype=np.int64)
        actions[name] = torch.from_numpy(classes[inverse].reshape(-1))
    return actions


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block from torch's RNG seeded with `seed` (and restore it after); None: as is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class StructuralModel:
    """The SCM over a trained VAE as a Pyro model: exogenous noise at sample sites, endogenous
    variables at deterministic sites computed by their mechanisms.

    u_<factor> ~ Gumbel(0, 1)^K, <factor> = argmax(log pi(k | parents) + u) (Gumbel-max);
    u_z ~ Normal(0, I), z = u_z; u_x ~ Uniform(0, 1)^(64 x 64), x = 1[u_x < p(y, z)].
    Queries wrap it in handlers (condition on noise, do, twin worlds) and never change it.
    """

    def __init__(self, vae: ConditionalVAE) -> None:
        self.vae = vae
        self._memo = threading.local()  # per thread, so concurrent queries (a web UI) stay apart

    def __call__(self, batch_size: int, num_samples: int = 1) -> dict[str, Tensor]:
        """Draw the noise, run the mechanisms; values (S, B) per factor, z (S, B, d), x (S, B,
        64, 64) float 0/1 (more leading dims under counterfactual handlers)."""
        vae, device = self.vae, self.vae.device()
        values: dict[str, Tensor] = {}
        with (
            pyro.plate("samples", num_samples, dim=-2),
            pyro.plate("data", batch_size, dim=-1),
        ):
            for name in vae.order:
                zeros = torch.zeros(SIZES[FACTORS.index(name)], device=device)
                noise = pyro.sample(
                    f"u_{name}", dist.Gumbel(zeros, 1.0, validate_args=False).to_event(1)
                )
                logits = vae.factor_dist(name, values).logits
                values[name] = pyro.deterministic(name, gumbel_max(logits, noise), event_dim=0)
            zeros = torch.zeros(vae.config.z_dim, device=device)
            u_z = pyro.sample("u_z", dist.Normal(zeros, 1.0, validate_args=False).to_event(1))
            values["z"] = pyro.deterministic("z", u_z, event_dim=1)
            low = torch.zeros(64, 64, device=device)
            u_x = pyro.sample("u_x", dist.Uniform(low, low + 1.0, validate_args=False).to_event(2))
            labels = torch.stack(torch.broadcast_tensors(*(values[n] for n in FACTORS)), -1)
            probs = self.pixel_probs(labels, values["z"])
            x = pixel_mechanism(probs, u_x).float()
            values["x"] = pyro.deterministic("x", x, event_dim=2)
        return values

    def pixel_probs(self, labels: Tensor, z: Tensor) -> Tensor:
        """Decoder means p(y, z) (..., 64, 64) of labels (..., 5) and styles (..., d).

        Rows equal to those registered by `reusing` return the registered floats: p is a pure
        function, and a decoder run in another batch layout may round differently, which would
        break the pixel noise abducted against those floats.
        """
        batch = torch.broadcast_shapes(labels.shape[:-1], z.shape[:-1])
        probs, todo = None, None
        known: tuple[Tensor, Tensor, Tensor] | None = getattr(self._memo, "known", None)
        if known is not None:
            known_labels, known_z, known_probs = known
            try:
                shape = torch.broadcast_shapes(batch, known_labels.shape[:-1], known_z.shape[:-1])
            except RuntimeError:
                shape = None
            if shape == batch:
                same = (labels == known_labels).all(-1) & (z == known_z).all(-1)
                if bool(same.all()):
                    return known_probs.expand(*batch, 64, 64)
                todo = ~same.expand(batch).reshape(-1)
                probs = known_probs.expand(*batch, 64, 64).reshape(-1, 64, 64).clone()
        labels = labels.expand(*batch, labels.shape[-1]).reshape(-1, labels.shape[-1])
        z = z.expand(*batch, z.shape[-1]).reshape(-1, z.shape[-1])
        if probs is None or todo is None:
            probs = torch.empty(len(labels), 64, 64, device=z.device)
            todo = torch.ones(len(labels), dtype=torch.bool, device=z.device)
        rows = todo.nonzero().squeeze(-1)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            probs[chunk] = torch.sigmoid(self.vae.x_logits(labels[chunk], z[chunk]))
        return probs.view(*batch, 64, 64)

    @contextmanager
    def reusing(self, labels: Tensor, z: Tensor, probs: Tensor) -> Iterator[None]:
        """Within the block, `pixel_probs` of (labels, z) rows returns these probs (a memo)."""
        self._memo.known = (labels, z, probs)
        try:
            yield
        finally:
            self._memo.known = None


def factor_log_joint(vae: ConditionalVAE, do: Mapping[str, int] | None = None) -> Tensor:
    """log p(y) over the whole factor grid (3, 6, 40, 32, 32) by enumeration; with `do`, of the
    mutilated network: intervened factors cut from their parents and fixed."""
    joint = torch.zeros(SIZES, dtype=torch.float64)
    for name in FACTORS:
        axis = FACTORS.index(name)
        if do is not None and name in do:
            table = torch.full((SIZES[axis],), -math.inf, dtype=torch.float64)
            table[do[name]] = 0.0
            axes = [axis]
        else:
            table = torch.log_softmax(vae.cpt(name).detach().cpu().double(), -1)
            axes = [FACTORS.index(p) for p in parents_of(vae.graph, name)] + [axis]
        table = table.permute(sorted(range(len(axes)), key=axes.__getitem__))
        shape = [SIZES[a] if a in axes else 1 for a in range(len(FACTORS))]
        joint = joint + table.reshape(shape)
    return joint


def restrict(log_joint: Tensor, evidence: Mapping[str, int]) -> Tensor:
    """The normalised log joint given evidence {factor: class}; zero probability is refused."""
    mask = torch.zeros(SIZES, dtype=torch.bool)
    index = tuple(evidence.get(name, slice(None)) for name in FACTORS)
    mask[index] = True
    restricted = log_joint.masked_fill(~mask, -math.inf)
    total = torch.logsumexp(restricted.reshape(-1), 0)
    if not bool(torch.isfinite(total)):
        given = ", ".join(f"{k}={v}" for k, v in evidence.items())
        raise CausalSpritesError(f"{given} has probability zero under the model")
    return restricted - total


def marginals(log_joint: Tensor) -> dict[str, np.ndarray]:
    """Per-factor marginal probabilities (K,) of a normalised log joint over the factor grid."""
    out = {}
    for axis, name in enumerate(FACTORS):
        others = [a for a in range(len(FACTORS)) if a != axis]
        out[name] = torch.logsumexp(log_joint, dim=others).exp().numpy()
    return out


def sample_grid(log_joint: Tensor, num_samples: int) -> Tensor:
    """Class tuples (N, 5) drawn from a normalised log joint over the factor grid."""
    flat = torch.multinomial(log_joint.reshape(-1).exp(), num_samples, replacement=True)
    return torch.as_tensor(np.stack(np.unravel_index(flat.numpy(), SIZES), -1))


def _world(value: Tensor, event_dim: int, world: int, shape: tuple[int, int]) -> Tensor:
    """One world's (S, B, *event) slice of a twin-world value; worlds found by `indices_of`
    (TwinWorldCounterfactual names its index `__fresh_split__`, not after the intervened site)."""
    names = indices_of(value, event_dim=event_dim)
    picked = gather(value, IndexSet(**{n: {world} for n in names}), event_dim=event_dim)
    event = picked.shape[picked.dim() - event_dim :]
    lead = picked.dim() - event_dim - 2
    if lead > 0:
        picked = picked.reshape(picked.shape[lead:])
    return picked.expand(*shape, *event)


@dataclass(frozen=True)
class Abduction:
    """The exogenous noise behind observed images, S samples each: `noise` maps every noise
    site (u_shape ... u_posY (S, B, K), u_z (S, B, d), u_x (S, B, 64, 64)) to its values;
    `labels` (B, 5) are the factual factors, `z` (S or 1, B, d) and `probs` (S or 1, B, 64, 64)
    the style and decoder means the pixel noise was abducted against."""

    noise: dict[str, Tensor]
    labels: Tensor
    inferred: bool
    z: Tensor
    probs: Tensor


@dataclass(frozen=True)
class SampleResult:
    """Images (N, 64, 64) uint8 with their classes (N, 5), the exact per-factor marginals
    {factor: (K,)} they are drawn from, and the seconds the query took."""

    images: np.ndarray
    classes: np.ndarray
    marginals: dict[str, np.ndarray]
    seconds: float


@dataclass(frozen=True)
class CounterfactualResult:
    """Counterfactual images (B, 64, 64) uint8, or (S, B, 64, 64) with num_samples; the factual
    classes (B, 5) (given, or `inferred`: the posterior's mode) and the counterfactual ones
    (B, 5) or (S, B, 5)."""

    images: np.ndarray
    factual: np.ndarray
    counterfactual: np.ndarray
    inferred: bool
    seconds: float


@dataclass(frozen=True)
class CounterfactualDistribution:
    """Per image b, the distinct counterfactual factor tuples `classes[b]` (T_b, 5) with their
    `probabilities[b]` (T_b,), most probable first, and one crisp image each `images[b]`
    (T_b, 64, 64) uint8; `pixel_probs` (B, 64, 64) the probability that each counterfactual pixel
    is on; `method[b]` "exact" where the image pins the answer down (one tuple, probability 1),
    else "monte_carlo" (`num_samples` draws of the abducted factor noise)."""

    classes: list[np.ndarray]
    probabilities: list[np.ndarray]
    images: list[np.ndarray]
    pixel_probs: np.ndarray
    method: list[str]
    num_samples: int
    seconds: float


class CausalModel:
    """A trained run: the conditional VAE and the SCM over its exogenous noise."""

    def __init__(self, model: ConditionalVAE, config: RunConfig, run_dir: Path | None = None):
        self.model = model
        self.config = config
        self.run_dir = run_dir
        self.scm = StructuralModel(model)
        self.likelihood_range = None if run_dir is None else read_likelihood_range(run_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def infer(self, x: np.ndarray | Tensor, top: int = 5) -> FactorPosterior:
        """The posterior p(y | x) over factor tuples of images (B, 64, 64), its `top` most
        probable first: the classifier proposes, the decoder decides (`model/readout.py`)."""
        if top < 1:
            raise CausalSpritesError(f"top must be >= 1, got {top}")
        images = as_images(x)
        parts = [
            infer_posterior(self.model, images[start : start + CHUNK].to(self.device), top)
            for start in range(0, len(images), CHUNK)
        ]
        return FactorPosterior.concatenate(parts)

    def infer_labels(self, x: np.ndarray | Tensor) -> np.ndarray:
        """The most probable factor classes (B, 5) of images (B, 64, 64): the posterior's mode."""
        return self.infer(x, top=1).mode

    def out_of_distribution(self, posterior: FactorPosterior) -> np.ndarray:
        """(B,) bool: images whose best factor tuple explains them far worse than the held-out
        data's (RUN/likelihood.json); all False when the run records no range."""
        if self.likelihood_range is None:
            return np.zeros(len(posterior.log_likelihood), dtype=bool)
        return posterior.log_likelihood < self.likelihood_range["threshold"]

    def refuse_out_of_distribution(self, posterior: FactorPosterior) -> None:
        """Raise a one-line error naming the first image no factor tuple explains."""
        flagged = np.flatnonzero(self.out_of_distribution(posterior))
        if len(flagged) and self.likelihood_range is not None:
            first, usual = int(flagged[0]), self.likelihood_range
            raise CausalSpritesError(
                f"image {first} is unlike any dSprites image: log-likelihood "
                f"{posterior.log_likelihood[first]:.0f} nats at its best factors, below this "
                f"run's threshold {usual['threshold']:.0f} (held-out median "
                f"{usual['median']:.1f}); no counterfactual"
            )

    @torch.no_grad()
    def encode(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None) -> Tensor:
        """Posterior means (B, z_dim) of q(z | x, y); labels from the classifier when y is None."""
        images = as_images(x)
        labels = as_labels(self.infer_labels(images[:, 0]) if y is None else y, len(images))
        codes = []
        for start in range(0, len(images), CHUNK):
            chunk = slice(start, start + CHUNK)
            posterior = self.model.z_posterior(
                images[chunk].to(self.device), labels[chunk].to(self.device)
            )
            codes.append(posterior.mean.cpu())
        return torch.cat(codes)

    @torch.no_grad()
    def decode_probs(self, y: np.ndarray | Tensor, z: Tensor) -> Tensor:
        """Pixel probabilities (B, 64, 64) of p(x | y, z)."""
        labels = as_labels(y, len(z))
        out = []
        for start in range(0, len(z), CHUNK):
            chunk = slice(start, start + CHUNK)
            logits = self.model.x_logits(labels[chunk].to(self.device), z[chunk].to(self.device))
            out.append(torch.sigmoid(logits).cpu())
        return torch.cat(out)

    def decode(self, y: np.ndarray | Tensor, z: Tensor) -> np.ndarray:
        """The most likely image (B, 64, 64) uint8 of p(x | y, z): pixels with p > 1/2."""
        return (self.decode_probs(y, z) > 0.5).numpy().astype(np.uint8)

    def reconstruct_with_codes(
        self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions (B, 64, 64) uint8 and the posterior means (B, z_dim) behind them."""
        images = as_images(x)
        labels = self.infer_labels(images[:, 0]) if y is None else as_labels(y, len(images))
        z = self.encode(images[:, 0], labels)
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
        images = as_images(x)
        labels = torch.as_tensor(
            self.infer_labels(images[:, 0]) if y is None else as_labels(y, len(images))
        ).clone()
        z = self.encode(images[:, 0], labels)
        for name, value in normalize_assignments(set_factors or {}).items():
            labels[:, FACTORS.index(name)] = value
        return self.decode(labels, z)

    # -- the structural causal model -----------------------------------------------------------
    @property
    def factor_graph(self) -> FactorGraph:
        """The model's factor SCM: its graph and learned tables."""
        parents = {n: tuple(parents_of(self.model.graph, n)) for n in FACTORS}
        tables = {n: torch.softmax(self.model.cpt(n).detach().cpu().double(), -1) for n in FACTORS}
        return FactorGraph.from_tables(parents, tables)

    def posterior(self, evidence: Mapping[str, Value] | None = None) -> dict[str, np.ndarray]:
        """Exact marginals p(factor | evidence) {factor: (K,)}: the factor network enumerated."""
        given = normalize_assignments(evidence or {})
        return marginals(restrict(factor_log_joint(self.model), given))

    @torch.no_grad()
    def condition_query(
        self,
        evidence: Mapping[str, Value] | None = None,
        num_samples: int = 16,
        seed: int | None = None,
    ) -> SampleResult:
        """Samples of p(x | evidence): factors from the exact posterior, then the image
        mechanism with fresh style and pixel noise (pyro.condition on the factor sites)."""
        start = time.perf_counter()
        _check_count(num_samples)
        given = normalize_assignments(evidence or {})
        log_joint = restrict(factor_log_joint(self.model), given)
        with seeded(seed):
            classes = sample_grid(log_joint, num_samples).to(self.device)
            data = {name: classes[:, i] for i, name in enumerate(FACTORS)}
            values = poutine.condition(self.scm, data=data)(num_samples)
        images = values["x"][0].to(torch.uint8).cpu().numpy()
        elapsed = time.perf_counter() - start
        return SampleResult(images, classes.cpu().numpy(), marginals(log_joint), elapsed)

    def condition(
        self,
        evidence: Mapping[str, Value] | None = None,
        num_samples: int = 16,
        seed: int | None = None,
    ) -> np.ndarray:
        """Images (N, 64, 64) uint8 sampled given factor values, e.g. {"scale": 5}."""
        return self.condition_query(evidence, num_samples, seed).images

    @torch.no_grad()
    def intervene_query(
        self, do: Mapping[str, Value], num_samples: int = 16, seed: int | None = None
    ) -> SampleResult:
        """Samples of p(x | do(...)): the SCM under ChiRho's `do`, intervened factors cut from
        their parents, descendants resampled; marginals by enumerating the mutilated network."""
        start = time.perf_counter()
        _check_count(num_samples)
        actions = normalize_assignments(do)
        log_joint = restrict(factor_log_joint(self.model, actions), {})
        tensors = {name: torch.tensor(v, device=self.device) for name, v in actions.items()}
        with seeded(seed):
            values = chirho_do(self.scm, actions=tensors)(num_samples)
        classes = torch.stack(
            [values[name].expand(1, num_samples)[0] for name in FACTORS], -1
        ).cpu()
        images = values["x"][0].to(torch.uint8).cpu().numpy()
        elapsed = time.perf_counter() - start
        return SampleResult(images, classes.numpy(), marginals(log_joint), elapsed)

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
    ) -> Abduction:
        """The noise posterior given images (B, 64, 64) and labels (B, 5) (None: the mode of
        the posterior p(y | x); out-of-distribution images are refused).

        `exact`: truncated Gumbels for the factors, Uniform(0, p) / Uniform(p, 1) pixels. `generic`:
        rejection sampling through the Pyro model, site by site (every endogenous site set by
        `pyro.poutine.do` to its observed value, so each mechanism's own output, kept in the
        trace, is checked against it). Both take the style from q(z | x, y): its mean, or samples
        with style="sample", after `refine_steps` per-image ELBO steps.
        """
        _check_count(num_samples)
        if method not in ("exact", "generic"):
            raise CausalSpritesError(f"unknown method {method!r}; use exact or generic")
        if style not in ("mean", "sample"):
            raise CausalSpritesError(f"unknown style {style!r}; use mean or sample")
        images = as_images(x).to(self.device)
        with seeded(seed):
            features = self.model.encoder.features(images)
            if y is None:
                posterior = self.infer(images[:, 0].cpu(), top=1)
                self.refuse_out_of_distribution(posterior)
                labels = torch.as_tensor(posterior.mode, device=self.device)
            else:
                labels = as_labels(y, len(images)).to(self.device)
            posterior = self.model.z_posterior(images, labels, features)
            loc, scale = posterior.mean, posterior.stddev
            if refine_steps > 0:
                loc, scale = self._refine(images, labels, loc, scale, refine_steps)
            if style == "mean":
                z = loc[None]
            else:
                z = loc + scale * torch.randn(num_samples, *loc.shape, device=loc.device)
            probs = self.scm.pixel_probs(labels, z)
            if method == "exact":
                noise = self._abduct_exact(images[:, 0], labels, probs, num_samples)
            else:
                noise = self._abduct_generic(images[:, 0], labels, z, probs, num_samples)
        noise["u_z"] = z.expand(num_samples, *loc.shape)
        return Abduction(noise, labels, y is None, z, probs)

    def _abduct_exact(
        self, x: Tensor, labels: Tensor, probs: Tensor, num_samples: int
    ) -> dict[str, Tensor]:
        noise = {}
        for i, name in enumerate(FACTORS):
            parents = {p: labels[:, FACTORS.index(p)] for p in parents_of(self.model.graph, name)}
            logits = self.model.factor_dist(name, parents).logits
            noise[f"u_{name}"] = gumbel_posterior(logits, labels[:, i], num_samples=num_samples)
        shape = (num_samples, *x.shape)
        noise["u_x"] = pixel_noise_posterior(x, probs, torch.rand(shape, device=x.device))
        return noise

    def _abduct_generic(
        self, x: Tensor, labels: Tensor, z: Tensor, probs: Tensor, num_samples: int
    ) -> dict[str, Tensor]:
        """Rejection sampling of every noise coordinate: prior proposals, M at a time in an outer
        plate; a coordinate keeps its first proposal whose mechanism output matches the
        observation, and a site whose coordinates are all settled is conditioned on them."""
        batch = len(labels)
        per_call = max(1, PROPOSAL_PIXELS // (num_samples * batch * 64 * 64))
        targets = {name: labels[:, i] for i, name in enumerate(FACTORS)}
        model = poutine.do(self.scm, data={**targets, "z": z})
        targets["x"] = x
        chosen: dict[str, Tensor] = {}
        found: dict[str, Tensor] = {}
        with self.scm.reusing(labels, z, probs):
            for _ in range(0, MAX_PROPOSALS, per_call):
                settled = {f"u_{n}": chosen[n] for n, f in found.items() if bool(f.all())}
                with pyro.plate("proposals", per_call, dim=-3):
                    conditioned = poutine.condition(model, data=settled)
                    trace = poutine.trace(conditioned).get_trace(batch, num_samples)
                for name in [*FACTORS, "x"]:
                    if f"u_{name}" in settled:
                        continue
                    proposal = cast(Tensor, trace.nodes[f"u_{name}"]["value"])
                    match = cast(Tensor, trace.nodes[name]["value"]) == targets[name]
                    if name != "x":  # a Gumbel vector is accepted or rejected as a whole
                        match = match[..., None]
                    match = match.expand_as(proposal)
                    if name not in chosen:
                        chosen[name] = torch.zeros_like(proposal[0])
                        found[name] = torch.zeros_like(match[0])
                    for j in range(per_call):
                        take = match[j] & ~found[name]
                        chosen[name] = torch.where(take, proposal[j], chosen[name])
                        found[name] = found[name] | take
                if all(bool(f.all()) for f in found.values()):
                    break
            else:
                missing = [name for name, f in found.items() if not bool(f.all())]
                raise CausalSpritesError(
                    f"generic abduction found no noise reproducing {', '.join(missing)} in "
                    f"{MAX_PROPOSALS} proposals (near-impossible observations); use method='exact'"
                )
        return {f"u_{name}": value for name, value in chosen.items()}

    def _refine(
        self, images: Tensor, labels: Tensor, loc: Tensor, scale: Tensor, steps: int
    ) -> tuple[Tensor, Tensor]:
        """A few Adam steps per image on the ELBO of q(z) = Normal(loc, scale), from the
        encoder's output (images are independent, so one batched loss refines each)."""
        loc = loc.detach().clone().requires_grad_(True)
        log_scale = scale.detach().log().requires_grad_(True)
        optimizer = torch.optim.Adam([loc, log_scale], lr=REFINE_LR)
        prior = self.model.z_dist(len(loc))
        with torch.enable_grad():
            for _ in range(steps):
                q = dist.Normal(loc, log_scale.exp()).to_event(1)
                z = q.rsample()
                recon = self.model.x_dist(labels, z).log_prob(images[:, 0])
                loss = (kl_divergence(q, prior) - recon).sum()
                loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
                optimizer.step()
        return loc.detach(), log_scale.detach().exp()

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
            for name, value in as_interventions(do, batch).items()
        }
        with (
            self.scm.reusing(abduction.labels, abduction.z, abduction.probs),
            TwinWorldCounterfactual(),
        ):
            model = chirho_do(poutine.condition(self.scm, data=abduction.noise), actions=actions)
            values = model(batch, num_samples)
            worlds = tuple(
                {
                    name: _world(value, EVENT_DIMS.get(name, 0), world, (num_samples, batch))
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
    ) -> CounterfactualResult:
        """Abduction, action, prediction for images (B, 64, 64), with do values by name or
        index, shared or one per image. Labels (B, 5), or None: the factors are then latent, read
        off the pixels by the posterior p(y | x): one answer abducts from its mode, `num_samples`
        answers from as many draws of it (out-of-distribution images are refused)."""
        start = time.perf_counter()
        _check_count(num_samples)
        images = as_images(x)
        actions = as_interventions(do, len(images))
        inferred = y is None
        if y is None:
            posterior = self.infer(images[:, 0], top=POSTERIOR_DRAW_TOP)
            self.refuse_out_of_distribution(posterior)
            if num_samples > 1:
                return self._counterfactual_over_posterior(
                    images[:, 0], posterior, actions, num_samples, method, style, seed, start
                )
            y = posterior.mode
        labels = as_labels(y, len(images))
        step = max(1, CHUNK // num_samples)
        outs, factual, counterfactual = [], [], []
        with seeded(seed):
            for first in range(0, len(images), step):
                rows = slice(first, first + step)
                abduction = self.abduct(
                    images[rows, 0],
                    None if labels is None else labels[rows],
                    num_samples,
                    method,
                    style,
                    refine_steps,
                )
                _, world = self.predict(abduction, {k: v[rows] for k, v in actions.items()})
                outs.append(world["x"].to(torch.uint8).cpu())
                factual.append(abduction.labels.cpu())
                counterfactual.append(torch.stack([world[n] for n in FACTORS], -1).cpu())
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
    ) -> CounterfactualResult:
        """`num_samples` counterfactuals of each image (B, 64, 64), each abducted from its own
        draw of the factor posterior: (S, B, ...) results."""
        draws = posterior.sample(num_samples, np.random.default_rng(seed))  # (S, B, 5)
        batch = len(images)
        result = self.counterfactual_query(
            images.repeat(num_samples, 1, 1),
            draws.reshape(-1, len(FACTORS)),
            {name: value.repeat(num_samples) for name, value in actions.items()},
            method=method,
            style=style,
            seed=seed,
        )
        return CounterfactualResult(
            result.images.reshape(num_samples, batch, 64, 64),
            posterior.mode,
            result.counterfactual.reshape(num_samples, batch, len(FACTORS)),
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

    @torch.no_grad()
    def counterfactual_distribution(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        do: Interventions | None = None,
        num_samples: int = 2000,
        seed: int | None = 0,
    ) -> CounterfactualDistribution:
        """The counterfactual of each image (B, 64, 64) as a distribution: over the factor noise
        abducted from its factual classes (labels (B, 5), or None: the posterior p(y | x) folded
        in, its top tuples weighted by their probabilities), the distinct counterfactual tuples
        with their probabilities; the pixel noise is abducted exactly, so each tuple's image and
        the per-pixel probability follow in closed form."""
        start = time.perf_counter()
        _check_count(num_samples)
        images = as_images(x)
        actions = as_interventions(do, len(images))
        if y is None:
            posterior = self.infer(images[:, 0], top=POSTERIOR_DRAW_TOP)
            self.refuse_out_of_distribution(posterior)
            weights = posterior.probabilities / posterior.probabilities.sum(1, keepdims=True)
            factuals = [(posterior.classes[:, k], weights[:, k]) for k in range(weights.shape[1])]
        else:
            factuals = [(as_labels(y, len(images)).numpy(), np.ones(len(images)))]
        graph = self.factor_graph
        identified = not graph.descendants(list(actions))
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        tables: list[dict[tuple[int, ...], float]] = [{} for _ in range(len(images))]
        pixel_probs = torch.zeros(len(images), 64, 64)
        pictures: list[dict[tuple[int, ...], np.ndarray]] = [{} for _ in range(len(images))]
        for labels, weight in factuals:
            keep = weight > 0
            if not keep.any():
                continue
            factual = torch.as_tensor(labels)
            drawn = graph.counterfactuals(factual, actions, num_samples, generator)
            rows, tuples, counts = _distinct_rows(drawn)
            z = self.encode(images[:, 0], factual)
            probs = self.decode_probs(factual, z)
            alternative = self.decode_probs(tuples, z[rows])
            on = _pixel_on_probability(images[rows, 0], probs[rows], alternative)
            noise = pixel_noise_posterior(
                images[:, 0], probs, torch.rand(probs.shape, generator=generator)
            )
            crisp = (noise[rows] < alternative).to(torch.uint8).numpy()
            share = torch.as_tensor(weight[rows.numpy()]) * counts / num_samples
            pixel_probs.index_add_(0, rows, (share[:, None, None] * on).float())
            for k, (b, t) in enumerate(zip(rows.tolist(), tuples.tolist(), strict=True)):
                if share[k] == 0:
                    continue
                key = tuple(t)
                tables[b][key] = tables[b].get(key, 0.0) + float(share[k])
                pictures[b].setdefault(key, crisp[k])
        classes, probabilities, pictures_out, method = [], [], [], []
        for table, shown in zip(tables, pictures, strict=True):
            order = [t for t, _ in sorted(table.items(), key=lambda item: -item[1])]
            classes.append(np.array(order, dtype=np.int64).reshape(-1, len(FACTORS)))
            probabilities.append(np.array([table[t] for t in order]))
            pictures_out.append(np.stack([shown[t] for t in order]))
            method.append("exact" if identified else "monte_carlo")
        return CounterfactualDistribution(
            classes,
            probabilities,
            pictures_out,
            pixel_probs.numpy(),
            method,
            num_samples,
            time.perf_counter() - start,
        )


def _pixel_on_probability(x: Tensor, factual: Tensor, counterfactual: Tensor) -> Tensor:
    """P(counterfactual pixel on) with the pixel noise abducted from x: u ~ Uniform(0, p) where
    x = 1 and Uniform(p, 1) where x = 0 (p the factual decoder mean), on iff u < p'."""
    on = (counterfactual / factual.clamp_min(1e-12)).clamp(max=1.0)
    off = ((counterfactual - factual) / (1 - factual).clamp_min(1e-12)).clamp(min=0.0)
    return torch.where(x > 0.5, on, off)


def _distinct_rows(drawn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct tuples of draws (S, B, 5) per image: image rows (T,), tuples (T, 5) and
    their counts (T,), grouped by image."""
    num_samples, batch, width = drawn.shape
    flat = drawn.permute(1, 0, 2).reshape(-1, width)
    image = torch.arange(batch).repeat_interleave(num_samples)
    keyed = torch.cat([image[:, None], flat], 1)
    unique, counts = torch.unique(keyed, dim=0, return_counts=True)
    return unique[:, 0], unique[:, 1:], counts


def _check_count(num_samples: int) -> None:
    if num_samples < 1:
        raise CausalSpritesError(f"the number of samples must be >= 1, got {num_samples}")


def load_run(run: str | Path, device: str | torch.device = "cpu") -> CausalModel:
    """The trained VAE + SCM of a run directory (`pretrained`: the one shipped with the package)."""
    from causal_sprites.runs import resolve_run
    from causal_sprites.runtime import choose_device

    chosen = device if isinstance(device, torch.device) else choose_device(device)
    model, config = load_model(run, chosen)
    return CausalModel(model, config, resolve_run(run))
