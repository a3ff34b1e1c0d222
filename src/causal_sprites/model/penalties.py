"""Training terms beyond the ELBO for what the likelihood cannot see. A counterfactual carries
the style z from one factor value to another, yet any z shifted by a function of the factors,
with a decoder that takes the shift off again, fits every image equally: `hsic` pulls z towards
independence of the factors, as the SCM assumes of its noise; `small_change_cost` charges the
decoder for the small changes such a shift is made of."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from causal_sprites.data.schema import Factor

#: Changes of the decoder's mean, in grey levels, beyond which `small_change_cost` charges no more.
CHANGE_CAP = 3.0


def change_rows(batch: int) -> int:
    """How many of a batch's rows (the first) `small_change_cost` is estimated on: a quarter (at
    least 4). Its two extra decoder passes on the whole batch made a step 1.67x as long; on a
    quarter 1.11x, the estimate unbiased, so 10 CPU-minutes train about 1.5x the steps."""
    return min(batch, max(4, batch // 4))


def hsic(first: Tensor, second: Tensor) -> Tensor:
    """The Hilbert-Schmidt independence criterion (Gretton et al. 2005) of each column of a batch
    (B, D1) with a batch of vectors (B, D2), summed over the columns: its unbiased estimator
    (Song et al. 2012), whose mean is 0 where each column is independent of the second. Gaussian
    kernels of median-distance bandwidths, one per column. Two failures of the simpler forms on
    the colour set (bench/own_data.py, BENCHMARKS.md): with one kernel over all of z, training
    stretched an independent column (the background's brightness, to 3 prior units) until the
    median bandwidth hid the others' dependence on the factors; the biased estimator is positive
    for independent columns too (about 1/B), so training shrank z to a constant, brightness
    with it. Training pulls q(z | x, y)'s mean towards independence of the factors, as the SCM
    assumes of the image noise."""
    size = len(first)
    if size < 4:
        return first.new_zeros(())

    def gram(values: Tensor) -> Tensor:  # (..., B, k) -> (..., B, B), zero diagonal
        distances = torch.cdist(values, values).square()
        bandwidth = distances.detach().flatten(-2).median(-1).values.clamp_min(1e-6)
        kernel = torch.exp(-distances / bandwidth[..., None, None])
        return kernel * (1.0 - torch.eye(size, device=values.device))

    columns, factors = gram(first.float().T[..., None]), gram(second.float())
    trace = (columns * factors).sum((-2, -1))
    sums = columns.sum((-2, -1)) * factors.sum() / ((size - 1) * (size - 2))
    cross = (columns.sum(-1) * factors.sum(-1)).sum(-1) * 2.0 / (size - 2)
    return ((trace + sums - cross) / (size * (size - 3))).sum()


def redraw_one_factor(y: Tensor, factors: Sequence[Factor]) -> Tensor:
    """Labels (B, K) with one factor per row, chosen uniformly, drawn again uniformly: a
    categorical factor's class, a continuous factor's value in its range."""
    redrawn = y.clone()
    chosen = torch.randint(0, len(factors), (len(y),), device=y.device)
    for i, factor in enumerate(factors):
        rows = chosen == i
        draw = torch.rand(int(rows.sum()), device=y.device)
        if factor.kind == "categorical":
            redrawn[rows, i] = (draw * factor.size).floor().clamp(max=factor.size - 1).to(y.dtype)
        else:
            assert factor.low is not None and factor.high is not None
            redrawn[rows, i] = (factor.low + draw * (factor.high - factor.low)).to(y.dtype)
    return redrawn


def small_change_cost(mean: Tensor, other: Tensor) -> Tensor:
    """Per image (B,), the sum over sub-pixels of |mean - other| in grey levels (means on the
    [-1, 1] scale, (B, C, H, W)), each capped at CHANGE_CAP. With `other` the decoder's mean at
    the same z and one factor redrawn, the cap leaves a factor's real change (tens of levels
    where it shows) free and charges the rest: a change of a level or two all over the image is
    what a decoder that draws the background a little off per factor, with z making up for it
    at each value, makes of a counterfactual. On the colour set (bench/own_data.py) it took
    do(hue)'s error on pixels the change should keep from 3.4x to 0.8x its reconstruction's."""
    return ((mean - other).abs() * 127.5).clamp(max=CHANGE_CAP).flatten(1).sum(-1)
