"""Reading continuous factors off the pixels: q(y | x)'s regression head proposes a value, the
model's own p(y) p(x | y) refines it on a grid around the proposal, one factor at a time with
the others held, and the grid's normalised weights give the value's spread along that factor
(the larger of the coarse and the fine grid's, since each underestimates what is narrower than its
step or wider than its span). That width is conditional on the other factors, and where factors
are coupled (the pendulum's shadow follows its angles) it is narrower than the marginal one: only
54-71 % of truths lay within two of it on a 10-minute model (bench/pendulum.py). The reported
`spread` is therefore never below q(y | x)'s own standard deviation, which is trained on the
labels: a flat likelihood shows as a wide spread (98-100 % coverage at 2 spreads on a 20-minute
pendulum model; 69 % for the shadow length on the 10-minute one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import torch
from torch import Tensor

from causal_sprites.model.vae import ConditionalVAE

#: Grid points per factor and pass; the first pass spans the proposal +- this many of q's
#: standard deviations, the second the first pass's best +- two of its steps.
GRID: Final = 17
SPAN: Final = 3.0
#: The first pass's half-width in a factor's range at least and at most.
MIN_HALF_WIDTH, MAX_HALF_WIDTH = 0.01, 0.5

Score = Callable[[Tensor], tuple[Tensor, Tensor]]


def propose(vae: ConditionalVAE, images: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
    """q(y | x)'s values and standard deviations (B, C) of the C continuous factors, in their
    units (the value kept inside its range)."""
    head = vae.regress(images, features)
    values, scales = [], []
    for name, normal in head.items():
        factor = vae.schema.factor(name)
        assert factor.low is not None and factor.high is not None
        span = factor.high - factor.low
        values.append(factor.low + span * normal.loc.clamp(0.0, 1.0))
        scales.append(span * normal.scale)
    return torch.stack(values, -1), torch.stack(scales, -1)


def refine(
    vae: ConditionalVAE, rows: Tensor, scales: Tensor, score: Score
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows (B, K) whose continuous columns hold proposals with q's scales (B, C), refined:
    `score(candidates (B, G, K)) -> (log p(y) + ELBO, ELBO)` each (B, G). Returns the rows at
    the best values, the spreads (B, C) (at least q's scales), and the joint score and ELBO (B,)
    at the result."""
    rows = rows.clone()
    spreads = torch.zeros_like(scales)
    columns = [vae.names.index(name) for name in vae.schema.continuous]
    for c, column in enumerate(columns):
        factor = vae.schema.factors[column]
        assert factor.low is not None and factor.high is not None
        span = factor.high - factor.low
        half = (SPAN * scales[:, c]).clamp(MIN_HALF_WIDTH * span, MAX_HALF_WIDTH * span)
        for _ in range(2):
            offsets = torch.linspace(-1.0, 1.0, GRID, device=rows.device)
            grid = (rows[:, column, None] + half[:, None] * offsets).clamp(factor.low, factor.high)
            candidates = rows[:, None].repeat(1, GRID, 1)
            candidates[..., column] = grid
            joint, _ = score(candidates)
            weights = torch.softmax(joint, -1)
            mean = (weights * grid).sum(-1)
            spread = (weights * (grid - mean[:, None]) ** 2).sum(-1).sqrt()
            spreads[:, c] = torch.maximum(spreads[:, c], spread)
            rows[:, column] = grid.gather(1, joint.argmax(-1, keepdim=True))[:, 0]
            half = half * 2.0 / (GRID - 1) * 2.0
    joint, likelihood = score(rows[:, None])
    return rows, torch.maximum(spreads, scales), joint[:, 0], likelihood[:, 0]
