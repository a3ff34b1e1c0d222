"""The SCM over a trained VAE as a Pyro model: exogenous noise at sample sites, endogenous
variables at deterministic sites computed by their mechanisms (Gumbel-max factors, style z = u_z,
thresholded-uniform pixels)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from chirho.indexed.ops import IndexSet, gather, indices_of
from torch import Tensor

from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.scm.mechanisms import gumbel_max

#: Images per decoder call.
CHUNK = 512


class StructuralModel:
    """The SCM over a trained VAE as a Pyro model: exogenous noise at sample sites, endogenous
    variables at deterministic sites computed by their mechanisms.

    u_<factor> ~ Gumbel(0, 1)^K, <factor> = argmax(log pi(k | parents) + u) (Gumbel-max) for a
    categorical factor; u_<factor> ~ Normal(0, 1), <factor> = f(u; parents) (its flow,
    `model/flows.py`) for a continuous one;
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
                if name in vae.flows:
                    zero = torch.zeros((), device=device)
                    noise = pyro.sample(f"u_{name}", dist.Normal(zero, 1.0, validate_args=False))
                    value = vae.flow(name)(noise, vae.parent_codes(name, values))
                else:
                    zeros = torch.zeros(vae.widths[vae.names.index(name)], device=device)
                    noise = pyro.sample(
                        f"u_{name}", dist.Gumbel(zeros, 1.0, validate_args=False).to_event(1)
                    )
                    value = gumbel_max(vae.factor_dist(name, values).logits, noise)
                values[name] = pyro.deterministic(name, value, event_dim=0)
            zeros = torch.zeros(vae.config.z_dim, device=device)
            u_z = pyro.sample("u_z", dist.Normal(zeros, 1.0, validate_args=False).to_event(1))
            values["z"] = pyro.deterministic("z", u_z, event_dim=1)
            u_x = pyro.sample("u_x", vae.noise_prior(device))
            labels = vae.stack(values)
            x = vae.x_mechanism(self.pixel_probs(labels, values["z"]), u_x)
            values["x"] = pyro.deterministic("x", x, event_dim=len(vae.x_event))
        return values

    def pixel_probs(self, labels: Tensor, z: Tensor) -> Tensor:
        """What the image mechanism reads (`ConditionalVAE.mechanism_params`: decoder means
        (..., 64, 64) on dSprites) of labels (..., K) and styles (..., d).

        Rows equal to those registered by `reusing` return the registered floats: p is a pure
        function, and a decoder run in another batch layout may round differently, which would
        break the pixel noise abducted against those floats.
        """
        batch = torch.broadcast_shapes(labels.shape[:-1], z.shape[:-1])
        event = self.vae.param_event
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
                    return known_probs.expand(*batch, *event)
                todo = ~same.expand(batch).reshape(-1)
                probs = known_probs.expand(*batch, *event).reshape(-1, *event).clone()
        labels = labels.expand(*batch, labels.shape[-1]).reshape(-1, labels.shape[-1])
        z = z.expand(*batch, z.shape[-1]).reshape(-1, z.shape[-1])
        if probs is None or todo is None:
            probs = torch.empty(len(labels), *event, device=z.device)
            todo = torch.ones(len(labels), dtype=torch.bool, device=z.device)
        rows = todo.nonzero().squeeze(-1)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            probs[chunk] = self.vae.mechanism_params(labels[chunk], z[chunk])
        return probs.view(*batch, *event)

    @contextmanager
    def reusing(self, labels: Tensor, z: Tensor, probs: Tensor) -> Iterator[None]:
        """Within the block, `pixel_probs` of (labels, z) rows returns these probs (a memo)."""
        self._memo.known = (labels, z, probs)
        try:
            yield
        finally:
            self._memo.known = None


def world_slice(
    site: str, value: Tensor, world: int, shape: tuple[int, int], x_dims: int = 2
) -> Tensor:
    """One world's (S, B, *event) slice of a site's twin-world value (z has 1 event dim, the
    image x `x_dims`, the factors none); worlds found by `indices_of` (TwinWorldCounterfactual
    names its index `__fresh_split__`, not after the intervened site)."""
    event_dim = {"z": 1, "x": x_dims}.get(site, 0)
    names = indices_of(value, event_dim=event_dim)
    picked = gather(value, IndexSet(**{n: {world} for n in names}), event_dim=event_dim)
    event = picked.shape[picked.dim() - event_dim :]
    lead = picked.dim() - event_dim - 2
    if lead > 0:
        picked = picked.reshape(picked.shape[lead:])
    return picked.expand(*shape, *event)
