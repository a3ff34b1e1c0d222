"""A continuous factor's mechanism: an invertible map of its exogenous noise given its parents,
fitted to the labels before the VAE trains (`FactorMechanisms.fit_learned`; a conditional
normalising flow in Pyro, as DeepSCM's).

    value = low + (high - low) * sigmoid(loc(parents) + scale(parents) * spline(u)),  u ~ N(0, 1)

The spline (Pyro's monotone rational-quadratic `Spline`) shapes the noise, e.g. a uniform root's
logistic logit; the affine step moves it with the parents (a network of their codes; a root's are
two numbers); the sigmoid keeps the value inside the factor's range. Every step is invertible, so
abduction is exact: u = spline^-1((logit(normalised value) - loc) / scale). A deterministic child
(the pendulum's noiseless shadow) is learned as a small scale.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import Tensor, nn
from torch.distributions.transforms import ComposeTransform, Transform

from causal_sprites.data.schema import Factor

#: Hidden units of each of the two layers of the network from parent codes to the affine step:
#: one layer of 64 left the pendulum's counterfactual shadow_length off the truth by 0.17 world
#: units at the median (the kinked max(3, |end - start|) of its geometry), two of 128 by 0.03,
#: at the same fit's cost.
HIDDEN: Final = 128
#: The normalised value is kept this far inside (0, 1), so that its logit stays finite.
EDGE: Final = 1e-5
#: Spline bins and half-width (in units of the standard normal noise).
BINS: Final = 8
BOUND: Final = 4.0


def _flat(value: Tensor, context: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    """Values (...,) and contexts (..., C) broadcast and flattened to (N, 1) and (N, C)."""
    batch = torch.broadcast_shapes(value.shape, context.shape[:-1])
    flat = value.float().expand(batch).reshape(-1, 1)
    codes = context.float().expand(*batch, context.shape[-1]).reshape(len(flat), -1)
    return flat, codes, batch


class ContinuousMechanism(nn.Module):
    """value = f(u; parents) for one continuous factor: log-density, sampling and exact
    inversion, for parent codes (B, context) (`encode_factors` of the parents; width 0 for a
    root)."""

    def __init__(self, factor: Factor, context_width: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        assert factor.low is not None and factor.high is not None
        self.low, self.high = float(factor.low), float(factor.high)
        self.spline = T.Spline(1, count_bins=BINS, bound=BOUND)
        self.context_width = context_width
        self.net = None
        if context_width:
            self.net = nn.Sequential(
                nn.Linear(context_width, hidden), nn.SiLU(),
                nn.Linear(hidden, hidden), nn.SiLU(),
                nn.Linear(hidden, 2),
            )  # fmt: skip
        self.root = nn.Parameter(torch.zeros(2)) if not context_width else None

    def _affine(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """loc and scale (B, 1) of the affine step for parent codes (B, context)."""
        if self.net is not None:
            params = self.net(context.float())
        else:
            assert self.root is not None
            params = self.root.expand(len(context), 2)
        loc, log_scale = params.chunk(2, dim=-1)
        return loc, torch.exp(log_scale.clamp(-12.0, 6.0))

    def transform(self, context: Tensor) -> Transform:
        """u (B, 1) -> value (B, 1), the mechanism given parent codes (B, context)."""
        loc, scale = self._affine(context)
        return ComposeTransform(
            [
                self.spline,
                T.AffineTransform(loc, scale, event_dim=1),
                T.SigmoidTransform(),
                T.AffineTransform(self.low, self.high - self.low),
            ]
        )

    def distribution(self, context: Tensor) -> dist.TransformedDistribution:
        """p(value | parents) over (B,) values with (B, 1) events."""
        base = dist.Normal(torch.zeros(len(context), 1, device=context.device), 1.0).to_event(1)
        return dist.TransformedDistribution(base, [self.transform(context)])

    def clip(self, value: Tensor) -> Tensor:
        """Values pulled EDGE inside the range: the ends of a range have infinite logits."""
        span = self.high - self.low
        return value.clamp(self.low + EDGE * span, self.high - EDGE * span)

    def log_prob(self, value: Tensor, context: Tensor) -> Tensor:
        """log p(value | parents) (...,) in the factor's unit, for values (...,) and parent
        codes (..., context)."""
        flat, codes, batch = _flat(self.clip(value), context)
        return self.distribution(codes).log_prob(flat).view(batch)

    def forward(self, noise: Tensor, context: Tensor) -> Tensor:
        """The value (...,) that noise u (...,) gives under parent codes (..., context)."""
        flat, codes, batch = _flat(noise, context)
        return self.transform(codes)(flat).view(batch)

    def abduct(self, value: Tensor, context: Tensor) -> Tensor:
        """The one noise u (...,) that gives `value` (...,) under these parents (exact)."""
        flat, codes, batch = _flat(self.clip(value), context)
        return self.transform(codes).inv(flat).view(batch)


class ScalarFlow(dist.TorchDistribution):
    """p(value | parents) of a continuous mechanism as a Pyro distribution with scalar events
    (a factor's site holds (B,) values, as a categorical factor's does)."""

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support: ClassVar[Any] = dist.constraints.real
    has_rsample = True

    def __init__(self, mechanism: ContinuousMechanism, context: Tensor) -> None:
        self.mechanism, self.context = mechanism, context
        super().__init__(context.shape[:-1], torch.Size(), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.mechanism.log_prob(value, self.context)

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        noise = torch.randn(shape, device=self.context.device)
        return self.mechanism(noise, self.context)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)
