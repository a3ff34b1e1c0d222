"""Pixel likelihoods: true probabilities, exact abduction (a counterfactual with the same
parameters returns the image), monotone prediction, and the mechanism drawing from p(x)."""

from __future__ import annotations

import math

import pytest
import torch

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.pixels import (
    Bernoulli,
    DiscretisedLogistic,
    bits_per_dim,
    get_likelihood,
)
from causal_sprites.scm.mechanisms import pixel_noise_posterior

LOGISTIC = DiscretisedLogistic()
BERNOULLI = Bernoulli()
VALUES = torch.arange(256).view(256, 1, 1, 1, 1)


def random_params(
    shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means over [-3, 3] (beyond the data's [-1, 1]) and log-scales over [-10, 10] (below the
    floor of -7 up to 22,000 times the data's range): (B, 2C, H, W) params and the means."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.rand(shape, generator=generator, dtype=dtype) * 6 - 3
    log_scale = torch.rand(shape, generator=generator, dtype=dtype) * 20 - 10
    return torch.cat([mean, log_scale], dim=1), mean


def random_images(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """uint8 images, a quarter of them all 0 and a quarter all 255 (the tail bins)."""
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))
    x[0::4], x[1::4] = 0, 255
    return x.to(torch.uint8)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_logistic_probabilities_sum_to_one(dtype: torch.dtype, tolerance: float) -> None:
    params, _ = random_params((32, 3, 4, 4), dtype)
    log_probs = LOGISTIC.pixel_log_prob(params, VALUES)  # (256, B, C, H, W)
    assert torch.isfinite(log_probs).all()
    assert (log_probs.exp().sum(0) - 1).abs().max() < tolerance


def test_logistic_is_the_cdf_difference_over_each_bin() -> None:
    """Where naive float64 is accurate, log P(k) = log(F(upper) - F(lower)), the logistic's mass
    over bin k (F(lower) = 0 for k = 0, F(upper) = 1 for k = 255)."""
    generator = torch.Generator().manual_seed(1)
    mean = torch.rand(16, 1, 2, 2, generator=generator, dtype=torch.float64) * 2 - 1
    log_scale = torch.rand(16, 1, 2, 2, generator=generator, dtype=torch.float64) * 3 - 4
    params = torch.cat([mean, log_scale], dim=1)
    edges = (2 * VALUES[..., None].double() + torch.tensor([-1.0, 1.0])) / 255 - 1  # lo, hi
    cdf = torch.sigmoid((edges - mean[..., None]) / log_scale.exp()[..., None])
    cdf[0, ..., 0], cdf[-1, ..., 1] = 0.0, 1.0
    expected = (cdf[..., 1] - cdf[..., 0]).log()
    got = LOGISTIC.pixel_log_prob(params, VALUES)
    accurate = expected > -10  # further out the naive difference cancels (to -inf at worst)
    assert accurate.float().mean() > 0.3 and torch.isfinite(got).all()
    assert torch.allclose(got[accurate], expected[accurate], rtol=1e-8, atol=0)


def test_logistic_log_prob_per_image_and_tiny_bins() -> None:
    """Per image the sub-pixels add up; a bin 1e-3 scales from a logistic of scale e^-7 keeps
    its mass (the tiny-bin case): -log P grows like the squared tail, finite and exact."""
    params, _ = random_params((4, 3, 5, 6), torch.float64)
    x = random_images((4, 3, 5, 6))
    assert torch.allclose(
        LOGISTIC.log_prob(params, x), LOGISTIC.pixel_log_prob(params, x).sum((1, 2, 3))
    )
    far = torch.tensor([[[[-1.0]], [[-7.0]]]], dtype=torch.float64)  # mean at bin 0
    log_p = LOGISTIC.pixel_log_prob(far, torch.tensor([[[[128]]]]))
    scale = math.exp(-7)
    lower, upper = (255 / 255) / scale, (257 / 255) / scale  # bin 128's edges, standardised
    expected = -lower + math.log1p(-math.exp(lower - upper))  # log(F(upper) - F(lower))
    assert log_p.item() == pytest.approx(expected, rel=1e-9)


def test_logistic_gradients_are_finite_at_the_extremes() -> None:
    params, _ = random_params((8, 3, 4, 4), torch.float32)
    params.requires_grad_(True)
    LOGISTIC.log_prob(params, random_images((8, 3, 4, 4))).sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


def test_logistic_log_prob_stays_finite_for_a_diverged_decoder() -> None:
    """Log-scales of hundreds (a pendulum run's decoder at z ~ 30) made exp(-log_scale) 0, a
    bin's mass 0 and the loss NaN; bounded at 7 the loss and its gradient stay finite, and the
    bound does not move values inside it."""
    mean = torch.tensor([[[[0.0, 600.0]]]])
    log_scale = torch.tensor([[[[300.0, 1500.0]]]])
    params = torch.cat([mean, log_scale], dim=1).requires_grad_(True)
    x = torch.tensor([[[[128, 3]]]], dtype=torch.uint8)
    log_prob = LOGISTIC.pixel_log_prob(params, x)
    assert torch.isfinite(log_prob).all()
    LOGISTIC.training_log_prob(params, x, 1.0).sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()
    inside = torch.tensor([[[[0.1]], [[6.9]]]]).reshape(1, 2, 1, 1)
    wide = math.exp(-6.9) * 2 / 255  # the bin's width over the scale: mass ~ width / 4
    assert LOGISTIC.pixel_log_prob(inside, torch.tensor([[[[140]]]], dtype=torch.uint8)).item() == (
        pytest.approx(math.log(wide / 4), abs=1e-3)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_counterfactual_with_the_same_params_returns_x(dtype: torch.dtype) -> None:
    shape = (64, 3, 8, 8)
    params, _ = random_params(shape, dtype, seed=2)
    x = random_images(shape, seed=2)
    uniform = torch.rand((4, *shape), dtype=dtype)
    noise = LOGISTIC.abduct(params, x, uniform)
    assert noise.shape == (4, *shape) and noise.dtype == dtype
    assert torch.equal(LOGISTIC.mechanism(params, noise), x.expand(4, *shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_round_trip_in_the_far_tails(dtype: torch.dtype) -> None:
    """Values the logistic almost never draws (P down to e^-4000) still come back exactly;
    a uniform u = F(eps) in float32 could not even represent their noise."""
    mean = torch.tensor([-3.0, 3.0, -3.0, 3.0, 0.0, 0.0], dtype=dtype)
    log_scale = torch.tensor([-7.0, -7.0, -7.0, -7.0, 10.0, 10.0], dtype=dtype)
    x = torch.tensor([255, 0, 200, 3, 128, 255], dtype=torch.uint8)
    params = torch.stack([mean, log_scale]).T.reshape(6, 2, 1, 1)
    x = x.view(6, 1, 1, 1)
    assert (LOGISTIC.pixel_log_prob(params, x)[:4] < -3000).all()
    for edge in (0.0, 0.5, 1.0 - 1e-7):
        noise = LOGISTIC.abduct(params, x, torch.full((6, 1, 1, 1), edge, dtype=dtype))
        assert torch.equal(LOGISTIC.mechanism(params, noise), x)


def test_logistic_median_noise_gives_the_median_counterfactual() -> None:
    """The prediction is monotone in the abducted noise, so the noise's posterior median (u =
    1/2 within the bin) gives each pixel the median of its counterfactual values, and with the
    factual parameters the image itself."""
    shape = (16, 3, 6, 6)
    factual = torch.cat([torch.rand(shape) * 2 - 1, torch.rand(shape) * 5 - 6], dim=1)
    changed = torch.cat([torch.rand(shape) * 2 - 1, torch.rand(shape) * 5 - 6], dim=1)
    x = LOGISTIC.mode(factual)
    grid = ((torch.arange(1001) + 0.5) / 1001).view(1001, 1, 1, 1, 1)  # its middle is 1/2
    spread = LOGISTIC.mechanism(changed, LOGISTIC.abduct(factual, x, grid.expand(-1, *shape)))
    median = LOGISTIC.mechanism(changed, LOGISTIC.abduct(factual, x, torch.full(shape, 0.5)))
    assert (spread[1:].int() >= spread[:-1].int()).all()  # monotone in u
    assert torch.equal(spread.sort(0).values[500], median)
    assert (spread[0] != spread[-1]).float().mean() > 0.1  # the draws do spread
    same = LOGISTIC.mechanism(factual, LOGISTIC.abduct(factual, x, torch.full(shape, 0.5)))
    assert torch.equal(same, x)


def test_logistic_abduction_is_the_truncated_posterior() -> None:
    """u = F(eps) given x is uniform on (F(lower), F(upper)): its position there is U(0, 1)."""
    params = torch.tensor([0.1, -2.5], dtype=torch.float64).view(1, 2, 1, 1)
    x = torch.tensor(140).view(1, 1, 1, 1)
    noise = LOGISTIC.abduct(params, x, torch.rand(100_000, 1, 1, 1, 1, dtype=torch.float64))
    scale = math.exp(-2.5)
    lower, upper = ((2 * 140 - 1) / 255 - 1.1) / scale, ((2 * 140 + 1) / 255 - 1.1) / scale
    u = (torch.sigmoid(noise) - torch.sigmoid(torch.tensor(lower))) / (
        torch.sigmoid(torch.tensor(upper)) - torch.sigmoid(torch.tensor(lower))
    )
    quantiles = torch.quantile(u.flatten(), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]).double())
    assert torch.allclose(quantiles, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]).double(), atol=0.01)


def test_logistic_mechanism_draws_from_the_likelihood() -> None:
    """Prior noise through the mechanism draws from exp(log P(k)): the empirical CDF of 200,000
    draws is within 0.006 of the true one (Kolmogorov-Smirnov's 1 % critical value: 0.0036)."""
    params = torch.tensor([-0.9, -3.0, 0.2, -1.0], dtype=torch.float64).view(2, 2, 1, 1)
    uniform = torch.rand(200_000, 2, 1, 1, 1, dtype=torch.float64)
    x = LOGISTIC.mechanism(params, LOGISTIC.noise_from_uniform(uniform)).long().view(-1, 2)
    for i in range(2):
        frequencies = torch.bincount(x[:, i], minlength=256).double() / len(x)
        probs = LOGISTIC.pixel_log_prob(params[i : i + 1], VALUES).exp().flatten()
        assert (frequencies.cumsum(0) - probs.cumsum(0)).abs().max() < 0.006


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_prediction_is_monotone_in_the_mean(dtype: torch.dtype) -> None:
    """With the abducted noise, a larger mean never gives a smaller value (and a smaller mean
    never a larger one), for shifts from 1 down to 1e-8; a shift of 0.5 (64 bins) moves every
    value inside the range by as much."""
    shape = (32, 3, 8, 8)
    params, _ = random_params(shape, dtype, seed=3)
    x = random_images(shape, seed=3)
    noise = LOGISTIC.abduct(params, x, torch.rand(shape, dtype=dtype))
    shift = torch.rand(shape, dtype=dtype) * torch.tensor(10.0, dtype=dtype) ** -torch.randint(
        0, 8, shape
    )
    mean, log_scale = params.chunk(2, dim=1)
    up = LOGISTIC.mechanism(torch.cat([mean + shift, log_scale], 1), noise)
    down = LOGISTIC.mechanism(torch.cat([mean - shift, log_scale], 1), noise)
    assert (up >= x).all() and (down <= x).all()
    big = LOGISTIC.mechanism(torch.cat([mean + 0.5, log_scale], 1), noise)
    inner = (x > 0) & (x < 255)  # a value inside [-1, 1] moves up 64 bins or to the top
    assert (big[inner].long() >= torch.clamp(x[inner].long() + 63, max=255)).all()


def test_logistic_mode_is_the_most_probable_value() -> None:
    params, _ = random_params((32, 3, 4, 4), torch.float64, seed=4)
    params[:8, 3:] = params[:8, 3:].abs()  # wide logistics, whose mode is a tail bin
    brute_force = LOGISTIC.pixel_log_prob(params, VALUES).argmax(0)
    mode = LOGISTIC.mode(params)
    assert mode.dtype == torch.uint8 and torch.equal(mode.long(), brute_force)
    assert {0, 255} <= set(mode.unique().tolist())


def test_bernoulli_matches_torch_and_the_scm_mechanism() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(8, 1, 6, 7, generator=generator) * 30
    x = (torch.rand(8, 1, 6, 7, generator=generator) < 0.5).to(torch.uint8)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.float()).sum((1, 2, 3))
    assert torch.allclose(BERNOULLI.log_prob(logits, x), expected)
    uniform = torch.rand(3, 8, 1, 6, 7, generator=generator)
    noise = BERNOULLI.abduct(logits, x, uniform)
    assert torch.equal(noise, pixel_noise_posterior(x, torch.sigmoid(logits), uniform))
    assert torch.equal(BERNOULLI.mechanism(logits, noise), x.expand(3, *x.shape))
    assert torch.equal(BERNOULLI.mode(logits), (torch.sigmoid(logits) > 0.5).to(torch.uint8))


@pytest.mark.parametrize("name", ["bernoulli", "discretised_logistic"])
def test_prior_noise_and_samples(name: str) -> None:
    likelihood = get_likelihood(name)
    params = torch.zeros(5, 3 * likelihood.params_per_channel, 4, 6)
    noise = likelihood.noise_prior((2, 5, 3, 4, 6)).sample()
    x = likelihood.mechanism(params, noise)
    assert x.shape == (2, 5, 3, 4, 6) and x.dtype == torch.uint8
    sample = likelihood.sample(params, torch.Generator().manual_seed(0))
    assert sample.shape == (5, 3, 4, 6) and int(sample.max()) <= (1 if name == "bernoulli" else 255)
    inputs = likelihood.network_input(sample)
    assert inputs.dtype == torch.float32 and -1 <= float(inputs.min()) <= float(inputs.max()) <= 1


def test_bits_per_dim_and_unknown_likelihood() -> None:
    assert bits_per_dim(3072 * math.log(2), 3072) == pytest.approx(1.0)
    nats = torch.tensor([0.0, 2 * 12 * math.log(2)])
    assert torch.allclose(bits_per_dim(nats, 12), torch.tensor([0.0, 2.0]))
    with pytest.raises(CausalSpritesError, match="unknown pixel likelihood"):
        get_likelihood("gaussian")


def test_logistic_nelbo_gradient_moves_the_mean_towards_the_data() -> None:
    """One gradient step on -log P raises a mean below the observed value and lowers one above."""
    params = torch.tensor([[[[-0.5]], [[-3.0]]], [[[0.5]], [[-3.0]]]], requires_grad=True)
    x = torch.full((2, 1, 1, 1), 128, dtype=torch.uint8)
    (-LOGISTIC.log_prob(params, x)).sum().backward()
    assert params.grad is not None
    assert params.grad[0, 0] < 0 < params.grad[1, 0]


def test_training_log_prob_reweights_only_the_gradient_scale() -> None:
    """beta = 0, or one scale everywhere (weights average 1 per image), gives log_prob itself;
    scale^2 beyond float32's range does not overflow the weights; Bernoulli ignores beta."""
    params, _ = random_params((4, 3, 5, 6), torch.float64, seed=6)
    x = random_images((4, 3, 5, 6), seed=6)
    log_prob = LOGISTIC.log_prob(params, x)
    assert torch.allclose(LOGISTIC.training_log_prob(params, x, beta=0.0), log_prob)
    flat = torch.cat([params[:, :3], torch.full_like(params[:, 3:], -2.0)], dim=1)
    assert torch.allclose(LOGISTIC.training_log_prob(flat, x, beta=1.0), LOGISTIC.log_prob(flat, x))
    huge = torch.cat([params[:, :3], params[:, 3:] * 5], dim=1)  # scale^2 up to e^100: inf
    assert torch.isfinite(LOGISTIC.training_log_prob(huge.float(), x, beta=1.0)).all()
    assert torch.equal(
        BERNOULLI.training_log_prob(params[:, :3], x > 127, beta=1.0),
        BERNOULLI.log_prob(params[:, :3], x > 127),
    )
