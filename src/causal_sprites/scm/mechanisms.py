"""Structural mechanisms of the SCM and their exact noise posteriors, in plain torch (no Pyro).

Factors use the Gumbel-max mechanism with top-down truncated-Gumbel abduction (Maddison, Tarlow &
Minka 2014, "A* sampling"; Oberst & Sontag 2019, "Counterfactual off-policy evaluation with
Gumbel-max structural causal models"); pixels use the thresholded-uniform mechanism x = 1[u < p].

Shapes: K categories on the last dim, any leading batch dims, written (B, K). Counterfactual
prediction with new logits is `gumbel_max(new_logits, abducted_gumbels)`.
"""

from __future__ import annotations

import math

import torch

from causal_sprites.errors import CausalSpritesError

__all__ = [
    "gumbel_max",
    "gumbel_posterior",
    "pixel_mechanism",
    "pixel_noise_posterior",
    "sample_gumbels",
    "truncated_gumbel",
]

_MAX_NUDGES = 64


def _uniform(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    if device is None and generator is not None:
        device = generator.device
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return u.clamp_min(torch.finfo(dtype).tiny)  # (0, 1): keeps every Gumbel finite


def _log_neg_log(uniform: torch.Tensor) -> torch.Tensor:
    """log(-log u) = -g for the standard Gumbel g that inverse-CDF sampling maps u to."""
    return torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))


def gumbel_max(logits: torch.Tensor, gumbels: torch.Tensor) -> torch.Tensor:
    """The Gumbel-max mechanism argmax_k(logits + gumbels): (B, K), (B, K) -> (B,) int64.

    Broadcasts over the leading dims, so (K,) logits with (S, B, K) noise give (S, B).
    """
    if logits.shape[-1:] != gumbels.shape[-1:]:
        raise CausalSpritesError(
            f"logits and gumbels disagree on the number of categories: "
            f"{tuple(logits.shape)} vs {tuple(gumbels.shape)}"
        )
    return torch.argmax(logits + gumbels, dim=-1)


def sample_gumbels(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise of the given shape, e.g. (B, K); finite by construction."""
    return -_log_neg_log(_uniform(tuple(shape), generator, dtype, device))


def truncated_gumbel(
    location: torch.Tensor, upper_bound: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """A Gumbel(location, 1) variate conditioned on being < upper_bound, by inverse CDF.

    All three broadcast together; uniform in (0, 1). Computed as
    location - logaddexp(location - upper_bound, log(-log u)): exact for an infinite bound (an
    untruncated Gumbel), no cancellation when the bound is far above or below the location, and
    -inf for location = -inf. The result is kept strictly below the bound (clamped to the float
    just under it, a change at float resolution only).
    """
    x = location - torch.logaddexp(location - upper_bound, _log_neg_log(uniform))
    return torch.minimum(x, torch.nextafter(upper_bound, torch.full_like(upper_bound, -math.inf)))


def gumbel_posterior(
    logits: torch.Tensor,
    observed: torch.Tensor | int,
    generator: torch.Generator | None = None,
    num_samples: int | None = None,
) -> torch.Tensor:
    """Exact posterior sample of the noise G ~ Gumbel(0, 1)^K given argmax(logits + G) = observed.

    logits (B, K) (float, -inf allowed for impossible categories), observed (B,) integer indices;
    the two broadcast over B. Returns G of shape (B, K), or (num_samples, B, K). Top-down: the
    max M ~ Gumbel(logsumexp(logits)) sits at the observed index, every other logits_k + G_k is
    Gumbel(logits_k) truncated below M (for logits_k = -inf, G_k is simply its prior). Always
    gumbel_max(logits, G) == observed exactly: rare float ties are pushed strictly below M.
    """
    if not logits.is_floating_point() or logits.dim() < 1 or logits.shape[-1] < 1:
        raise CausalSpritesError(f"logits must be a float tensor (..., K), got {logits.dtype}")
    observed = torch.as_tensor(observed, device=logits.device)
    if observed.is_floating_point() or observed.is_complex() or observed.dtype == torch.bool:
        raise CausalSpritesError(
            f"observed must hold integer category indices, got {observed.dtype}"
        )
    num_categories = logits.shape[-1]
    if observed.numel() and bool(((observed < 0) | (observed >= num_categories)).any()):
        bad = observed[(observed < 0) | (observed >= num_categories)]
        raise CausalSpritesError(
            f"observed category {int(bad.flatten()[0])} is out of range for {num_categories} "
            f"categories (valid: 0..{num_categories - 1})"
        )
    if not bool((logits < math.inf).all()):
        raise CausalSpritesError("logits must not contain NaN or +inf")
    try:
        batch = torch.broadcast_shapes(logits.shape[:-1], observed.shape)
    except RuntimeError as err:
        raise CausalSpritesError(
            f"logits {tuple(logits.shape)} and observed {tuple(observed.shape)} do not broadcast"
        ) from err
    if num_samples is not None:
        if num_samples < 1:
            raise CausalSpritesError(f"num_samples must be >= 1, got {num_samples}")
        batch = torch.Size((num_samples, *batch))
    logits = logits.expand(*batch, num_categories)
    index = observed.long().expand(batch).unsqueeze(-1)  # (B, 1)
    top_logit = logits.gather(-1, index)
    if bool(torch.isneginf(top_logit).any()):
        raise CausalSpritesError("observed category has probability zero (its logit is -inf)")

    neg_noise = _log_neg_log(_uniform(logits.shape, generator, logits.dtype, logits.device))
    top = torch.logsumexp(logits, dim=-1, keepdim=True) - neg_noise.gather(-1, index)  # M
    # Others in noise space: G_k ~ Gumbel(0) truncated below M - logits_k (no cancellation).
    gumbels = -torch.logaddexp(logits - top, neg_noise)
    gumbels = gumbels.scatter(-1, index, top - top_logit)
    return _push_below_top(logits, gumbels, index)


def _push_below_top(
    logits: torch.Tensor, gumbels: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """Lower any non-observed G_k whose logits_k + G_k rounds to >= the observed one's."""
    is_top = torch.zeros_like(gumbels, dtype=torch.bool).scatter(-1, index, True)
    eps = torch.finfo(gumbels.dtype).eps
    for attempt in range(_MAX_NUDGES):
        perturbed = logits + gumbels
        top = perturbed.gather(-1, index)
        bad = (perturbed >= top) & ~is_top
        if not bool(bad.any()):
            return gumbels
        scale = torch.maximum(torch.maximum(top.abs(), logits.abs()), gumbels.abs())
        step = eps * scale.clamp_min(1.0) * 2.0**attempt
        gumbels = torch.where(bad, (top - step) - logits, gumbels)
    raise RuntimeError("gumbel_posterior could not separate the observed maximum (float overflow?)")


def pixel_mechanism(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The pixel mechanism x = 1[u < p]: probs (B, H, W), uniform (B, H, W) -> bool (B, H, W)."""
    return uniform < probs


def pixel_noise_posterior(
    x: torch.Tensor, probs: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """Posterior pixel noise u given x = 1[u < p]: Uniform(0, p) where x = 1, else Uniform(p, 1].

    x (B, H, W) binary (bool or 0/1), probs (B, H, W) in [0, 1], uniform (B, H, W) in [0, 1);
    they broadcast. Returns u with pixel_mechanism(probs, u) == x exactly. Where x has likelihood
    zero (x = 1 with p = 0) u is set to the float just below p (negative): the only case u is not
    a posterior sample, as there is none. x = 0 with p = 1 gives u = 1, which reproduces x.
    """
    if not probs.is_floating_point():
        raise CausalSpritesError(f"probs must be a float tensor, got {probs.dtype}")
    uniform = uniform.to(probs.dtype)
    on = x.to(torch.bool)
    below = torch.nextafter(probs, torch.full_like(probs, -math.inf))
    u_on = torch.minimum(uniform * probs, below)  # in [0, p); rounding could have reached p
    u_off = probs + uniform * (1.0 - probs)  # in [p, 1]; >= p exactly since rounding is monotone
    return torch.where(on, u_on, u_off)
