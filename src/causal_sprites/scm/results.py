"""What queries return: abducted noise, samples with their exact marginals, counterfactual
images, and counterfactual distributions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor


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
    """Images (N, H, W[, C]) uint8 with their factors (N, K), the per-factor marginals
    {factor: (K,)} they are drawn from (exact where every factor is categorical, else the
    frequencies of `continuous`' draws), the seconds the query took, and each continuous
    factor's summary {factor: {mean, sd, q05, ..., q95, draws}} (`scm/factor_sampling.py`)."""

    images: np.ndarray
    classes: np.ndarray
    marginals: dict[str, np.ndarray]
    seconds: float
    continuous: dict[str, dict[str, float]] = field(default_factory=dict)


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
