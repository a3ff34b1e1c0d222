"""The independence term of training (`penalties.hsic`): zero for independent batches, large where z
is a function of the factors, and a loss part of the `images` preset."""

from __future__ import annotations

import torch

from causal_sprites.config import PRESETS
from causal_sprites.model.penalties import hsic
from causal_sprites.optim import objective_weights


def test_hsic_tells_dependent_from_independent_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    factors = torch.rand(256, 2, generator=generator)
    independent = torch.randn(256, 3, generator=generator)
    dependent = torch.cat([torch.sin(6 * factors), factors[:, :1] ** 2], dim=1)
    assert hsic(independent, factors).item() < 0.005
    assert hsic(dependent, factors).item() > 10 * hsic(independent, factors).item()


def test_a_stretched_column_does_not_hide_another_ones_dependence() -> None:
    """One kernel over all of z let training stretch an independent column until the median
    bandwidth hid the rest (the colour set's z held hue so): each column has its own kernel."""
    generator = torch.Generator().manual_seed(2)
    factors = torch.rand(256, 2, generator=generator)
    z = torch.randn(256, 3, generator=generator)
    z[:, 1] = 0.3 * z[:, 1] + factors[:, 0]
    independent = torch.randn(256, 3, generator=generator)
    stretched = z * torch.tensor([100.0, 1.0, 1.0])
    assert abs(hsic(stretched, factors).item() - hsic(z, factors).item()) < 1e-4
    assert hsic(stretched, factors).item() > 5 * hsic(independent, factors).item()


def test_hsic_gradient_pulls_towards_independence() -> None:
    generator = torch.Generator().manual_seed(1)
    factors = torch.rand(128, 2, generator=generator)
    z = (factors @ torch.randn(2, 4, generator=generator)).requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=0.05)
    start = hsic(z, factors).item()
    for _ in range(100):
        optimiser.zero_grad()
        hsic(z, factors).backward()
        optimiser.step()
    assert hsic(z, factors).item() < start / 3


def test_images_preset_weighs_the_independence_term() -> None:
    weights = objective_weights(PRESETS["images"], 0.5)
    assert weights["independence_weight"] == 1e4
    assert "independence_weight" not in objective_weights(PRESETS["default"], 0.5)


def test_independent_columns_cost_nothing_on_average() -> None:
    """The biased estimator is about 1/B for independent columns, so training shrank the colour
    set's z to a constant, brightness with it: the unbiased one averages 0."""
    generator = torch.Generator().manual_seed(3)
    values = [
        hsic(torch.randn(64, 8, generator=generator), torch.rand(64, 4, generator=generator))
        for _ in range(300)
    ]
    draws = torch.stack(values)
    assert abs(draws.mean().item()) < 3 * draws.std().item() / 300**0.5
    assert (draws < 0).any() and (draws > 0).any()
