"""Counterfactuals as distributions: where the image does not pin the factor noise down (a
stochastic mechanism's descendants), the answer is a law over counterfactual factor tuples, from
Monte Carlo draws of the abducted Gumbel noise; each tuple's image and the per-pixel probability
follow in closed form from the exact pixel-noise posterior."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import DRAW_TOP, FactorPosterior
from causal_sprites.scm.inputs import (
    Interventions,
    as_images,
    as_interventions,
    as_labels,
    as_user,
    check_count,
)
from causal_sprites.scm.mechanisms import pixel_noise_posterior
from causal_sprites.scm.results import CounterfactualDistribution

if TYPE_CHECKING:
    from causal_sprites.scm.queries import CausalModel


@torch.no_grad()
def counterfactual_distribution(
    model: CausalModel,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor | None = None,
    do: Interventions | None = None,
    num_samples: int = 2000,
    seed: int | None = 0,
    posterior: FactorPosterior | None = None,
) -> CounterfactualDistribution:
    """The counterfactual of each image (B, 64, 64) as a distribution: over the factor noise
    abducted from its factual classes (labels (B, 5), or None: the posterior p(y | x) folded
    in, its top tuples weighted by their probabilities; `posterior` when the caller has it
    already), the distinct counterfactual tuples
    with their probabilities; the pixel noise is abducted exactly, so each tuple's image and
    the per-pixel probability follow in closed form."""
    start = time.perf_counter()
    check_count(num_samples)
    if model.model.likelihood is not None:
        raise CausalSpritesError(
            "counterfactual distributions are computed for binary dSprites images only so far"
        )
    images = as_images(x, model.schema)
    actions = as_interventions(do, len(images), model.schema)
    if y is None:
        if posterior is None:
            posterior = model.infer(as_user(images), top=DRAW_TOP)
        model.refuse_out_of_distribution(posterior)
        weights = posterior.probabilities / posterior.probabilities.sum(1, keepdims=True)
        factuals = [(posterior.classes[:, k], weights[:, k]) for k in range(weights.shape[1])]
    else:
        factuals = [(as_labels(y, len(images), model.schema).numpy(), np.ones(len(images)))]
    graph = model.factor_graph
    identified = not graph.descendants(list(actions))
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    tables: list[dict[tuple[int, ...], float]] = [{} for _ in range(len(images))]
    pixel_probs = torch.zeros(len(images), 64, 64)
    pictures: list[dict[tuple[int, ...], np.ndarray]] = [{} for _ in range(len(images))]
    for labels, weight in factuals:
        if not (weight > 0).any():
            continue
        factual = torch.as_tensor(labels)
        drawn = graph.counterfactuals(factual, actions, num_samples, generator)
        rows, tuples, counts = _distinct_rows(drawn)
        z = model.encode(as_user(images), factual)
        probs = model.decode_params(factual, z)
        alternative = model.decode_params(tuples, z[rows])
        on = _pixel_on_probability(as_user(images[rows]), probs[rows], alternative)
        noise = pixel_noise_posterior(
            as_user(images), probs, torch.rand(probs.shape, generator=generator)
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
        classes.append(np.array(order, dtype=np.int64).reshape(-1, len(model.schema.names)))
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
