"""Abduction: the exogenous noise behind an observed image, exactly (truncated Gumbels for the
factors, the side of the decoder mean that reproduces each pixel) or by generic rejection
sampling through the Pyro model, the cross-check the tests hold the exact path against."""

from __future__ import annotations

from typing import cast

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import kl_divergence

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.scm.inputs import PixelNoise
from causal_sprites.scm.mechanisms import gumbel_posterior
from causal_sprites.scm.structural import StructuralModel

#: Per-image ELBO steps on q(z | x, y) before abduction. 0: on the pretrained run 10 or 50 steps
#: left the counterfactual IoU against the true images unchanged (0.993 either way).
REFINE_STEPS = 0
REFINE_LR = 0.05
#: Pixels proposed per model run, and proposals per noise coordinate at most, in the generic
#: (rejection) abduction.
PROPOSAL_PIXELS = 2**21
MAX_PROPOSALS = 4096


def pixel_noise_rule(
    vae: ConditionalVAE, pixel_noise: PixelNoise | None, num_samples: int
) -> PixelNoise:
    """How abduction takes each pixel's noise from its posterior given the observed value:
    `pixel_noise` when given, else its median for one answer on 8-bit images and draws
    otherwise. The median gives each pixel the median of the model's counterfactual (the
    mechanism is monotone in the noise), the least absolute error under the model; where one
    draw went far off, the counterfactual's scale was a median 12x the factual's (an edge drawn
    where the input was flat; BENCHMARKS.md). Binary images (dSprites, pinned) keep draws."""
    if pixel_noise not in (None, "median", "draw"):
        raise CausalSpritesError(f"unknown pixel noise {pixel_noise!r}; use median or draw")
    if pixel_noise is not None:
        return pixel_noise
    return "median" if _eight_bit(vae) and num_samples == 1 else "draw"


def _eight_bit(vae: ConditionalVAE) -> bool:
    """Whether the model's images are 8-bit (not binary: dSprites' or a Bernoulli likelihood's)."""
    return vae.likelihood is not None and vae.likelihood.name != "bernoulli"


def abduct_noise(
    scm: StructuralModel,
    images: Tensor,
    labels: Tensor,
    features: Tensor,
    num_samples: int,
    method: str,
    style: str,
    refine_steps: int,
    pixel_noise: PixelNoise = "draw",
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The noise behind images (B, C, H, W) with labels (B, K): the style from q(z | x, y) (its
    mean, or `num_samples` draws with style="sample", after `refine_steps` per-image ELBO steps);
    the factors' and pixels' noise `exact` (truncated Gumbels; each pixel's noise given its
    value, drawn or its median, `pixel_noise_rule`) or `generic` (rejection sampling through the
    Pyro model, site by site, every endogenous site set by `pyro.poutine.do` to its observed
    value). Returns the noise {site: (S, B, ...)}, z (S or 1, B, d) and the image mechanism's
    parameters behind it."""
    vae = scm.vae
    posterior = vae.z_posterior(images, labels, features)
    loc, scale = posterior.mean, posterior.stddev
    if refine_steps > 0:
        loc, scale = refine_style(vae, images, labels, loc, scale, refine_steps)
    if style == "mean":
        z = loc[None]
    else:
        z = loc + scale * torch.randn(num_samples, *loc.shape, device=loc.device)
    probs = scm.pixel_probs(labels, z)
    pixels = vae.site_images(images)
    if method == "exact":
        noise = exact_noise(vae, pixels, labels, probs, num_samples, pixel_noise)
    elif _eight_bit(vae):
        # Rejection accepts an 8-bit value with its probability (1e-2 to 1e-6): never done.
        raise CausalSpritesError("generic abduction is for binary images; use method='exact'")
    elif pixel_noise == "median":
        raise CausalSpritesError("generic abduction draws the pixel noise; use pixel_noise='draw'")
    else:
        noise = generic_noise(scm, pixels, labels, z, probs, num_samples)
    noise["u_z"] = z.expand(num_samples, *loc.shape)
    return noise, z, probs


def exact_noise(
    vae: ConditionalVAE,
    x: Tensor,
    labels: Tensor,
    probs: Tensor,
    num_samples: int,
    pixel_noise: PixelNoise = "draw",
) -> dict[str, Tensor]:
    """The exact noise posterior of images (B, *x_event) with labels (B, K) and the image
    mechanism's parameters `probs` (decoder means on dSprites): truncated Gumbels per categorical
    factor, a continuous factor's flow inverted,
    each pixel's noise given its value (Uniform(0, p) / Uniform(p, 1) for binary pixels, the
    noise of the observed 8-bit bin otherwise; drawn, or its median); S samples."""
    noise = {}
    values = {name: labels[:, i] for i, name in enumerate(vae.names)}
    for i, name in enumerate(vae.names):
        if name in vae.flows:  # a flow is invertible: one noise gives the value
            u = vae.flow(name).abduct(labels[:, i], vae.parent_codes(name, values))
            noise[f"u_{name}"] = u.expand(num_samples, -1)
            continue
        logits = vae.factor_dist(name, values).logits
        observed = labels[:, i].long()
        noise[f"u_{name}"] = gumbel_posterior(logits, observed, num_samples=num_samples)
    shape = (num_samples, *x.shape)
    if pixel_noise == "median":
        uniform = torch.full(shape, 0.5, device=x.device)
    else:
        uniform = torch.rand(shape, device=x.device)
    noise["u_x"] = vae.abduct_pixels(probs, x, uniform)
    return noise


def generic_noise(
    scm: StructuralModel,
    x: Tensor,
    labels: Tensor,
    z: Tensor,
    probs: Tensor,
    num_samples: int,
) -> dict[str, Tensor]:
    """Rejection sampling of every noise coordinate: prior proposals, M at a time in an outer
    plate; a coordinate keeps its first proposal whose mechanism output matches the
    observation, and a site whose coordinates are all settled is conditioned on them."""
    batch = len(labels)
    per_call = max(1, PROPOSAL_PIXELS // (num_samples * x.numel()))
    targets = {name: labels[:, i] for i, name in enumerate(scm.vae.names)}
    model = poutine.do(scm, data={**targets, "z": z})
    targets["x"] = x
    chosen: dict[str, Tensor] = {}
    found: dict[str, Tensor] = {}
    with scm.reusing(labels, z, probs):
        for _ in range(0, MAX_PROPOSALS, per_call):
            settled = {f"u_{n}": chosen[n] for n, f in found.items() if bool(f.all())}
            with pyro.plate("proposals", per_call, dim=-3):
                conditioned = poutine.condition(model, data=settled)
                trace = poutine.trace(conditioned).get_trace(batch, num_samples)
            for name in [*scm.vae.names, "x"]:
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


def refine_style(
    vae: ConditionalVAE, images: Tensor, labels: Tensor, loc: Tensor, scale: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """A few Adam steps per image on the ELBO of q(z) = Normal(loc, scale), from the
    encoder's output (images are independent, so one batched loss refines each)."""
    loc = loc.detach().clone().requires_grad_(True)
    log_scale = scale.detach().log().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=REFINE_LR)
    prior = vae.z_dist(len(loc))
    with torch.enable_grad():
        for _ in range(steps):
            q = dist.Normal(loc, log_scale.exp()).to_event(1)
            z = q.rsample()
            recon = vae.x_dist(labels, z).log_prob(vae.site_images(images))
            loss = (kl_divergence(q, prior) - recon).sum()
            loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
            optimizer.step()
    return loc.detach(), log_scale.detach().exp()
