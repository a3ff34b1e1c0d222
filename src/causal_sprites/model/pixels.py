"""Pixel likelihoods p(x | params) with their exact noise mechanisms, for the image node of the SCM.

Binary images: Bernoulli pixels, x = 1[u < sigmoid(logit)]. 8-bit grey or colour images: the
discretised logistic of PixelCNN++ (Salimans et al. 2017), one logistic per sub-pixel (no mixture,
no channel autoregression), whose mechanism is the inverse CDF x = bin(mean + scale * eps).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.nn import functional as F

from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.mechanisms import pixel_mechanism, pixel_noise_posterior

__all__ = [
    "LIKELIHOODS",
    "Bernoulli",
    "DiscretisedLogistic",
    "PixelLikelihood",
    "bits_per_dim",
    "get_likelihood",
]

#: Values of an 8-bit sub-pixel; bin k is centred on 2k/255 - 1 on the logistic's [-1, 1] scale.
NUM_BINS = 256
#: PixelCNN++'s floor on the log-scale: narrower logistics only cost precision.
MIN_LOG_SCALE = -7.0
#: The widest logistic, e^7 ~ 1,100 times the [-1, 1] range (a flat bin mass ~2e-6): wider,
#: exp(-log_scale) underflows, a bin's mass becomes 0 and its log -inf. A pendulum run whose
#: encoder diverged drew z ~ 30 and log-scales of 300 to 1,500 from them: every batch's loss was
#: NaN and training stopped (10 skipped in a row); bounded, the loss stays finite and the KL
#: pulls the encoder back.
MAX_LOG_SCALE = 7.0

Number = TypeVar("Number", float, Tensor)


def bits_per_dim(nats_per_image: Number, num_dims: int) -> Number:
    """Nats per image -> bits per sub-pixel, num_dims = H * W * C (the usual image-model unit)."""
    return nats_per_image / (num_dims * math.log(2.0))


class PixelLikelihood(ABC):
    """A pixel likelihood and its structural mechanism x = f(params, noise), one noise coordinate
    per sub-pixel. `params` are the decoder's outputs (B, P * C, H, W), P = `params_per_channel`;
    images x are integer-valued (B, C, H, W); any extra leading dims of the noise broadcast."""

    name: ClassVar[str]
    params_per_channel: ClassVar[int]

    @abstractmethod
    def pixel_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) per sub-pixel, (B, C, H, W)."""

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | params) per image in nats, (B,)."""
        return self.pixel_log_prob(params, x).sum((-3, -2, -1))

    def training_log_prob(self, params: Tensor, x: Tensor, beta: float) -> Tensor:
        """The reconstruction term to differentiate in training, (B,); `log_prob` unless the
        likelihood has a learned scale (then see DiscretisedLogistic). Report `log_prob`."""
        return self.log_prob(params, x)

    @abstractmethod
    def network_input(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the float tensor an encoder reads."""

    @abstractmethod
    def noise_prior(
        self,
        shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dist.TorchDistribution:
        """The exogenous noise's prior, batch shape `shape` (a Pyro site; `.to_event(3)` it)."""

    @abstractmethod
    def noise_from_uniform(self, uniform: Tensor) -> Tensor:
        """Uniform(0, 1) draws -> prior noise draws of the same shape."""

    @abstractmethod
    def mechanism(self, params: Tensor, noise: Tensor) -> Tensor:
        """The image x = f(params, noise), uint8 (..., C, H, W)."""

    @abstractmethod
    def abduct(self, params: Tensor, x: Tensor, uniform: Tensor) -> Tensor:
        """An exact posterior draw of the noise given x, from Uniform(0, 1) draws `uniform`
        (e.g. (S, B, C, H, W)); `mechanism(params, noise) == x` exactly wherever p(x) > 0 in
        floats. Pass the very `params` tensor the prediction will use: exp and sigmoid may round
        differently in another memory layout."""

    @abstractmethod
    def mode(self, params: Tensor) -> Tensor:
        """The most probable image, uint8 (B, C, H, W), for display."""

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """An image drawn from p(x | params) through the mechanism, uint8 (B, C, H, W)."""
        batch, channels, height, width = params.shape
        shape = (batch, channels // self.params_per_channel, height, width)
        uniform = torch.rand(shape, generator=generator, dtype=params.dtype, device=params.device)
        return self.mechanism(params, self.noise_from_uniform(uniform))


class Bernoulli(PixelLikelihood):
    """Binary pixels; params are logits (B, C, H, W); the mechanism x = 1[u < sigmoid(logit)],
    u ~ Uniform(0, 1), abducted as Uniform(0, p) where x = 1 and Uniform(p, 1) where x = 0."""

    name = "bernoulli"
    params_per_channel = 1

    def pixel_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | logits) per pixel, (B, C, H, W), x in {0, 1}."""
        target = x.to(params.dtype)
        return -F.binary_cross_entropy_with_logits(params, target, reduction="none")

    def network_input(self, x: Tensor) -> Tensor:
        """{0, 1} pixels as floats."""
        return x.float()

    def noise_prior(
        self,
        shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dist.TorchDistribution:
        """u ~ Uniform(0, 1) per pixel."""
        low = torch.zeros(shape, device=device, dtype=dtype)
        return dist.Uniform(low, low + 1.0, validate_args=False)

    def noise_from_uniform(self, uniform: Tensor) -> Tensor:
        """The noise is the uniform itself."""
        return uniform

    def mechanism(self, params: Tensor, noise: Tensor) -> Tensor:
        """x = 1[u < sigmoid(logit)], uint8 (..., C, H, W)."""
        return pixel_mechanism(torch.sigmoid(params), noise).to(torch.uint8)

    def abduct(self, params: Tensor, x: Tensor, uniform: Tensor) -> Tensor:
        """u | x: Uniform(0, p) where x = 1, Uniform(p, 1) where x = 0."""
        return pixel_noise_posterior(x, torch.sigmoid(params), uniform)

    def mode(self, params: Tensor) -> Tensor:
        """1 where p > 1/2."""
        return (params > 0).to(torch.uint8)


class DiscretisedLogistic(PixelLikelihood):
    """8-bit sub-pixels; params (B, 2C, H, W) are C means then C log-scales of a logistic on the
    [-1, 1] scale. P(x = k) is its mass over bin k, (2k - 1)/255 - 1 .. (2k + 1)/255 - 1, with
    bins 0 and 255 taking the tails: a true probability over the 256 values.

    The mechanism is the inverse CDF with the noise written eps = logit(u) ~ Logistic(0, 1):
    x = bin(mean + scale * eps), i.e. the number of bins whose standardised upper edge
    (edge - mean) / scale lies below eps. The same x as u ~ Uniform(0, 1) with bin(F^-1(u)), but
    float32 u cannot resolve tails the logistic reaches (u within 6e-8 of 1); eps can.
    Abduction: eps | x is the logistic truncated to the bin's standardised edges, i.e.
    u | x ~ Uniform(F(lower edge), F(upper edge)).
    """

    name = "discretised_logistic"
    params_per_channel = 2

    @staticmethod
    def split_params(params: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2C, H, W) -> mean and log-scale (B, C, H, W), the log-scale within [-7, 7]."""
        mean, log_scale = params.chunk(2, dim=-3)
        return mean, log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)

    def pixel_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log P(x | params) per sub-pixel, (B, C, H, W), x in {0, ..., 255}."""
        mean, log_scale = self.split_params(params)
        lower, upper, width = _bin_bounds(x.to(mean.dtype), mean, torch.exp(-log_scale))
        return _log_mass(lower, upper, width)

    def training_log_prob(self, params: Tensor, x: Tensor, beta: float) -> Tensor:
        """log P(x) per image with each sub-pixel's term weighted by scale^(2 beta), held
        constant and normalised to mean 1 per image (beta-NLL, Seitzer et al. 2022); beta = 0
        is `log_prob`. For the gradient only: the value is no bound.

        With beta = 0 a decoder fits the sharp background first, then explains a small object
        by widening its scale instead of moving its mean, whose gradient (1 / scale) the
        background's drowns: a decoder alone left a 12 x 12 coloured square on 32 x 48 grey
        100 levels off after 2,000 Adam steps. With beta = 1 the VAE of tests/test_convnets.py
        draws it within 15 in 600 steps (seeds 0-9); beta = 0.5 had not in 600."""
        log_probs = self.pixel_log_prob(params, x).flatten(-3)
        log_weights = 2 * beta * self.split_params(params)[1].detach().flatten(-3)
        weights = torch.softmax(log_weights, dim=-1) * log_weights.shape[-1]  # no overflow
        return (log_probs * weights).sum(-1)

    def network_input(self, x: Tensor) -> Tensor:
        """0..255 -> the likelihood's [-1, 1] scale."""
        return x.float() / 127.5 - 1.0

    def noise_prior(
        self,
        shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dist.TorchDistribution:
        """eps ~ Logistic(0, 1) per sub-pixel (eps = logit(u), u ~ Uniform(0, 1))."""
        loc = torch.zeros(shape, device=device, dtype=dtype)
        return dist.Logistic(loc, torch.ones_like(loc), validate_args=False)

    def noise_from_uniform(self, uniform: Tensor) -> Tensor:
        """eps = logit(u)."""
        return torch.logit(uniform)

    def mechanism(self, params: Tensor, noise: Tensor) -> Tensor:
        """x = #{k < 255 : t_k < eps}, t_k bin k's standardised upper edge; uint8 (..., C, H, W).

        Rounding mean + scale * eps gives the bin up to float error; comparing eps with the
        edges next to it settles it, so the bins form an exact partition of the noise line."""
        mean, log_scale = self.split_params(params)
        inv_scale = torch.exp(-log_scale)
        guess = torch.nan_to_num((mean + noise / inv_scale + 1.0) * 127.5, nan=127.5)
        k = guess.clamp(0, NUM_BINS - 1).round().to(mean.dtype)
        while True:
            too_high = (k > 0) & (noise <= _upper_edge(k - 1, mean, inv_scale))
            too_low = (k < NUM_BINS - 1) & (noise > _upper_edge(k, mean, inv_scale))
            if not bool((too_high | too_low).any()):
                return k.to(torch.uint8)
            # The edges rise with k, so each step moves k towards the one answer.
            k = k - too_high.to(k.dtype) + too_low.to(k.dtype)

    def abduct(self, params: Tensor, x: Tensor, uniform: Tensor) -> Tensor:
        """eps | x: inverse-CDF draws of the logistic truncated to x's bin (lower, upper].

        In log space on both sides, log u = log(F(lower) + v * mass) and log(1 - u) =
        log(1 - F(upper) + (1 - v) * mass), so eps = log u - log(1 - u) keeps its precision
        in either tail; a float draw that rounds out of the bin is clamped back into it."""
        mean, log_scale = self.split_params(params)
        lower, upper, width = _bin_bounds(x.to(mean.dtype), mean, torch.exp(-log_scale))
        log_mass = _log_mass(lower, upper, width)
        uniform = uniform.to(mean.dtype)
        log_u = torch.logaddexp(F.logsigmoid(lower), torch.log(uniform) + log_mass)
        log_not_u = torch.logaddexp(F.logsigmoid(-upper), torch.log1p(-uniform) + log_mass)
        above_lower = torch.nextafter(lower, torch.full_like(lower, math.inf))
        return torch.minimum(torch.maximum(log_u - log_not_u, above_lower), upper)

    def mode(self, params: Tensor) -> Tensor:
        """The most probable value per sub-pixel, uint8 (B, C, H, W).

        The logistic is symmetric and unimodal, so among the inner bins the one holding the
        mean has the most mass; only the tail bins 0 and 255 can beat it."""
        mean, _ = self.split_params(params)
        inner = torch.nan_to_num((mean + 1.0) * 127.5).clamp(1, NUM_BINS - 2).round()
        candidates = torch.stack([torch.zeros_like(inner), inner, torch.full_like(inner, 255)])
        best = self.pixel_log_prob(params, candidates).argmax(0, keepdim=True)
        return candidates.gather(0, best).squeeze(0).to(torch.uint8)


def _upper_edge(k: Tensor, mean: Tensor, inv_scale: Tensor) -> Tensor:
    """(edge - mean) / scale for the upper edge (2k + 1)/255 - 1 of bins k (float, mean's
    dtype). Integer arithmetic is exact in floats, then each step rounds once, so the same k
    gives the same floats wherever this is called: abduction and the mechanism agree exactly."""
    edge = (2 * k - (NUM_BINS - 2)) / (NUM_BINS - 1)
    return (edge - mean) * inv_scale


def _bin_bounds(k: Tensor, mean: Tensor, inv_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Standardised lower and upper edges of bins k (float) and their exact distance: infinite
    at the tail bins 0 and 255."""
    lower = torch.where(k > 0, _upper_edge(k - 1, mean, inv_scale), -math.inf)
    upper = torch.where(k < NUM_BINS - 1, _upper_edge(k, mean, inv_scale), math.inf)
    inner = (k > 0) & (k < NUM_BINS - 1)
    width = torch.where(inner, inv_scale * (2.0 / (NUM_BINS - 1)), math.inf)
    return lower, upper, width


def _log_mass(lower: Tensor, upper: Tensor, width: Tensor) -> Tensor:
    """log(sigmoid(upper) - sigmoid(lower)), width = upper - lower, without cancellation:
    the difference is sigmoid(upper) * sigmoid(-lower) * (1 - exp(-width)), so a bin far in a
    tail or far narrower than the scale (PixelCNN++'s tiny-bin case) keeps its exact mass."""
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-width))


LIKELIHOODS: dict[str, PixelLikelihood] = {
    likelihood.name: likelihood for likelihood in (Bernoulli(), DiscretisedLogistic())
}


def get_likelihood(name: str) -> PixelLikelihood:
    """The likelihood called `name` ("bernoulli" or "discretised_logistic")."""
    if name not in LIKELIHOODS:
        known = ", ".join(sorted(LIKELIHOODS))
        raise CausalSpritesError(f"unknown pixel likelihood {name!r} (known: {known})")
    return LIKELIHOODS[name]
