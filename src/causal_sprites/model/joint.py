"""The model's own score of a factor tuple y for an image x: log p(y) plus the ELBO of
log p(x | y) at q(z | x, y)'s mean, or with q's location refined per tuple (`refined_elbo`).
The readout ranks tuples by it (`model/readout.py`); training records the held-out range of
the ELBO at the true tuples (`train.held_out_likelihood_range`), which refusals compare with."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import kl_divergence
from torch.nn import functional as F

from causal_sprites.model.vae import ConditionalVAE

#: Adam's steps and rate on q(z | x, y)'s location in `refined_elbo`: tried on one colour run's
#: small discs, fewer steps at a higher rate left more of them ranked below "square" or diverged,
#: and four times the steps gained little.
REFINE_STEPS, REFINE_RATE = 50, 0.05


def log_prior(vae: ConditionalVAE, tuples: Tensor) -> Tensor:
    """log p(y) (N,) of factor tuples (N, K) under the model's mechanisms (its tables where
    every factor is categorical; a continuous factor's density in its unit)."""
    if not vae.schema.continuous:
        return vae.factors.log_prob(tuples)
    values = {name: tuples[:, i] for i, name in enumerate(vae.names)}
    total = torch.zeros(len(tuples), device=tuples.device)
    for i, name in enumerate(vae.names):
        value = tuples[:, i] if name in vae.flows else tuples[:, i].long()
        total = total + vae.factor_dist(name, values).log_prob(value)
    return total


def elbo(
    vae: ConditionalVAE,
    images: Tensor,
    features: Tensor,
    tuples: Tensor,
    posterior: dist.TorchDistribution | None = None,
) -> Tensor:
    """The ELBO of log p(x | y) (N,) at q's mean: log p(x | y, E_q[z]) - KL(q(z | x, y) || p(z)),
    for images (N, C, H, W) with their encoder features (N, F) and factor tuples (N, K).
    Deterministic, so candidates are ranked the same on every call. `posterior`: q(z | x, y)
    computed by the caller (without its gradient, say)."""
    if posterior is None:
        posterior = vae.z_posterior(images, tuples, features)
    params = vae.x_logits(tuples, posterior.mean)
    if vae.likelihood is not None:
        recon = vae.likelihood.log_prob(params, images)
    else:
        bce = F.binary_cross_entropy_with_logits(params, images[:, 0], reduction="none")
        recon = -bce.sum((-1, -2))
    return recon - kl_divergence(posterior, vae.z_dist(len(tuples)))


def refined_elbo(
    vae: ConditionalVAE, images: Tensor, features: Tensor, tuples: Tensor, steps: int = REFINE_STEPS
) -> Tensor:
    """`elbo` (N,) with q(z | x, y)'s location moved by `steps` of Adam (rate REFINE_RATE) to
    raise it, its scale kept; the best bound met on the way, the encoder's own included. Still
    a bound of log p(x | y), tighter where the encoder's amortised guess is off: on the colour
    set, that gap (hundreds of nats) ranked "square" above "disc" for small discs
    (BENCHMARKS.md). The model's parameters get no gradient."""
    with torch.no_grad():
        start = vae.z_posterior(images, tuples, features)
    loc, scale = start.mean.detach().clone(), start.base_dist.scale.detach()
    best = torch.full((len(tuples),), -torch.inf, device=images.device)
    loc.requires_grad_(True)
    optimiser = torch.optim.Adam([loc], lr=REFINE_RATE)
    for step in range(steps + 1):
        with torch.enable_grad():
            bound = elbo(vae, images, features, tuples, dist.Normal(loc, scale).to_event(1))
            best = torch.maximum(best, bound.detach())
            if step == steps:
                break
            (loc.grad,) = torch.autograd.grad(-bound.sum(), loc)
        optimiser.step()
    return best
