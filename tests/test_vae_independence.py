"""The independence term of training (`vae.hsic`): zero for independent batches, large where z
is a function of the factors, and a loss part of the `images` preset."""

from __future__ import annotations

import torch

from causal_sprites.config import PRESETS
from causal_sprites.model.vae import hsic
from causal_sprites.train import objective_weights


def test_hsic_tells_dependent_from_independent_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    factors = torch.rand(256, 2, generator=generator)
    independent = torch.randn(256, 3, generator=generator)
    dependent = torch.cat([torch.sin(6 * factors), factors[:, :1] ** 2], dim=1)
    assert hsic(independent, factors).item() < 0.005
    assert hsic(dependent, factors).item() > 10 * hsic(independent, factors).item()
    assert hsic(factors, factors).item() >= hsic(dependent, factors).item()


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
