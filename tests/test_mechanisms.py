"""Gumbel-max and pixel mechanisms: prior, exact noise posteriors, counterfactual properties.

Statistical checks use fixed seeds; tolerances are about 5 standard errors (or the two-sample
Kolmogorov-Smirnov critical value at alpha = 1e-3), so they are honest, not tuned to the seed.
"""

import math

import pytest
import torch

from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.mechanisms import (
    gumbel_max,
    gumbel_posterior,
    pixel_mechanism,
    pixel_noise_posterior,
    sample_gumbels,
    truncated_gumbel,
)

EULER_GAMMA = 0.5772156649015329


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| of two 1-d samples."""
    a, b = torch.sort(a.double()).values, torch.sort(b.double()).values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def _ks_critical(n: int, m: int) -> float:
    """Two-sample KS critical value at alpha = 1e-3: c(alpha) sqrt((n + m) / (n m))."""
    return math.sqrt(-0.5 * math.log(1e-3 / 2)) * math.sqrt((n + m) / (n * m))


# --- prior -------------------------------------------------------------------------------------


def test_sample_gumbels_moments_and_reproducibility() -> None:
    g = sample_gumbels((200_000,), _gen(0), dtype=torch.float64)
    assert g.dtype == torch.float64 and bool(torch.isfinite(g).all())
    assert float(g.mean()) == pytest.approx(EULER_GAMMA, abs=5 * 1.2825 / math.sqrt(g.numel()))
    assert float(g.var()) == pytest.approx(math.pi**2 / 6, rel=0.02)
    torch.testing.assert_close(sample_gumbels((3, 4), _gen(7)), sample_gumbels((3, 4), _gen(7)))
    assert sample_gumbels(torch.Size([2, 5])).shape == (2, 5)


def test_gumbel_max_of_prior_noise_is_softmax() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0, -0.5])
    n = 200_000
    draws = gumbel_max(logits, sample_gumbels((n, 5), _gen(1)))
    assert draws.shape == (n,) and draws.dtype == torch.int64
    counts = torch.bincount(draws, minlength=5).double()
    expected = n * torch.softmax(logits.double(), -1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # chi-square, 4 degrees of freedom, 0.999 quantile


def test_gumbel_max_broadcasts_and_checks_categories() -> None:
    logits = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]])
    assert gumbel_max(logits, torch.zeros(4, 2, 3)).tolist() == [[1, 0]] * 4
    with pytest.raises(CausalSpritesError, match="categories"):
        gumbel_max(logits, torch.zeros(2, 4))


# --- truncated Gumbel --------------------------------------------------------------------------


def test_truncated_gumbel_matches_rejection_sampling() -> None:
    location, bound = 0.7, 0.2  # keeps about exp(-exp(0.5)) = 19% of the prior draws
    prior = location + sample_gumbels((300_000,), _gen(2), dtype=torch.float64)
    accepted = prior[prior < bound]
    ours = truncated_gumbel(
        torch.tensor(location, dtype=torch.float64),
        torch.tensor(bound, dtype=torch.float64),
        torch.rand(accepted.numel(), generator=_gen(3), dtype=torch.float64),
    )
    assert bool((ours < bound).all())
    assert _ks_statistic(ours, accepted) < _ks_critical(ours.numel(), accepted.numel())


def test_truncated_gumbel_extreme_bounds() -> None:
    u = torch.rand(10_000, generator=_gen(4)).clamp_min(1e-30)
    loc = torch.zeros(())
    # Infinite bound: the untruncated Gumbel, identical to inverse-CDF sampling.
    torch.testing.assert_close(
        truncated_gumbel(loc, torch.tensor(math.inf), u), -torch.log(-torch.log(u))
    )
    # Bound far below the location: pinned just under it, strictly.
    for bound in (-50.0, -1e4, 3.0, 1e-30, 0.0):
        b = torch.tensor(bound)
        x = truncated_gumbel(loc, b, u)
        assert bool(torch.isfinite(x).all()) and bool((x < b).all())
    # Bound far above: the truncation is invisible.
    x = truncated_gumbel(loc, torch.tensor(60.0), u)
    torch.testing.assert_close(x, -torch.log(-torch.log(u)))
    # An impossible category stays impossible.
    assert bool(torch.isneginf(truncated_gumbel(torch.tensor(-math.inf), loc, u)).all())


# --- Gumbel posterior --------------------------------------------------------------------------


def _hard_logits(generator: torch.Generator) -> torch.Tensor:
    """Random logits plus extreme rows: +-30, ties, huge magnitudes, -inf categories."""
    random = (
        torch.randn(3000, 6, generator=generator)
        * torch.tensor([0.1, 1.0, 3.0]).repeat(1000)[:, None]
    )
    special = torch.tensor(
        [
            [-30.0, 30.0, 0.0, 0.0, 0.0, 0.0],
            [30.0, -30.0, 30.0, -30.0, 30.0, -30.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0, -1.0, -1.0, -1.0],
            [1e6, 0.0, -1e6, 1e6, 0.0, 1.0],
            [-1e6, 1e6, 1e6 + 1.0, 0.0, 3e7, 1e-7],
            [0.0, -math.inf, 2.0, -math.inf, 0.0, 5.0],
            [-3e7, -3e7, -3e7, -3e7, -3e7, -3e7],
        ]
    ).repeat(50, 1)
    return torch.cat([random, special])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_posterior_noise_always_reproduces_the_observation(dtype: torch.dtype) -> None:
    logits = _hard_logits(_gen(5)).to(dtype)
    observed = torch.randint(0, 6, logits.shape[:1], generator=_gen(6))
    observed[torch.isneginf(logits.gather(1, observed[:, None]))[:, 0]] = 0  # keep it possible
    gumbels = gumbel_posterior(logits, observed, _gen(7), num_samples=20)
    assert gumbels.shape == (20, *logits.shape) and gumbels.dtype == dtype
    assert bool(torch.isfinite(gumbels).all())
    # Strictly the unique maximum, not just argmax's first-index tie-break.
    perturbed = logits + gumbels
    top = perturbed.gather(-1, observed.expand(20, -1)[..., None])
    assert int((perturbed >= top).sum(-1).max()) == 1
    # Counterfactual consistency: the same logits give back the observation.
    assert torch.equal(gumbel_max(logits.clone(), gumbels), observed.expand(20, -1))


def test_posterior_broadcasts_logits_over_observations() -> None:
    logits = torch.tensor([0.0, 1.0, -2.0])  # a root factor's table, shared by the batch
    observed = torch.tensor([0, 2, 1, 2])
    gumbels = gumbel_posterior(logits, observed, _gen(8))
    assert gumbels.shape == (4, 3)
    assert torch.equal(gumbel_max(logits, gumbels), observed)
    single = gumbel_posterior(logits, 2, _gen(8), num_samples=5)
    assert single.shape == (5, 3) and gumbel_max(logits, single).tolist() == [2] * 5


def test_posterior_is_reproducible_with_a_generator() -> None:
    logits = torch.randn(4, 5, generator=_gen(9))
    observed = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(
        gumbel_posterior(logits, observed, _gen(10)), gumbel_posterior(logits, observed, _gen(10))
    )


def test_posterior_matches_rejection_sampling() -> None:
    logits = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64)
    observed = 1  # the least likely category, p ~ 0.13
    prior = sample_gumbels((600_000, 4), _gen(11), dtype=torch.float64)
    accepted = prior[gumbel_max(logits, prior) == observed]
    assert accepted.shape[0] > 60_000
    ours = gumbel_posterior(logits, observed, _gen(12), num_samples=accepted.shape[0])
    critical = _ks_critical(ours.shape[0], accepted.shape[0])
    for k in range(4):
        assert _ks_statistic(ours[:, k], accepted[:, k]) < critical, k
        se = float(accepted[:, k].std()) * math.sqrt(2 / accepted.shape[0])
        assert float(ours[:, k].mean()) == pytest.approx(float(accepted[:, k].mean()), abs=5 * se)
        for q in (0.1, 0.5, 0.9):
            assert float(ours[:, k].quantile(q)) == pytest.approx(
                float(accepted[:, k].quantile(q)), abs=0.05
            )
    # The dependence between coordinates too: the gap between the top and the runner-up.
    gap_ours = (logits + ours).sort(-1).values
    gap_rej = (logits + accepted).sort(-1).values
    assert _ks_statistic(gap_ours[:, -1] - gap_ours[:, -2], gap_rej[:, -1] - gap_rej[:, -2]) < (
        critical
    )


@pytest.mark.parametrize("observed", [0, 1, 2])
def test_posterior_maximum_is_gumbel_at_logsumexp(observed: int) -> None:
    logits = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    gumbels = gumbel_posterior(logits, observed, _gen(13 + observed), num_samples=100_000)
    top = (logits + gumbels).max(-1).values
    expected = float(torch.logsumexp(logits, 0)) + EULER_GAMMA
    assert float(top.mean()) == pytest.approx(expected, abs=5 * 1.2825 / math.sqrt(top.numel()))
    assert float(top.var()) == pytest.approx(math.pi**2 / 6, rel=0.03)


def test_counterfactual_is_stable_when_the_observed_category_gains() -> None:
    # Oberst & Sontag's counterfactual stability: raising only the observed logit keeps it.
    logits = torch.randn(2000, 5, generator=_gen(16)) * 2
    observed = torch.randint(0, 5, (2000,), generator=_gen(17))
    gumbels = gumbel_posterior(logits, observed, _gen(18))
    boost = torch.rand(2000, 1, generator=_gen(19)) * 5
    new_logits = logits + boost * torch.nn.functional.one_hot(observed, 5)
    assert torch.equal(gumbel_max(new_logits, gumbels), observed)


def test_counterfactuals_average_to_the_new_softmax() -> None:
    # Observation from the prior, noise from its posterior: the noise is again prior-distributed,
    # so the counterfactual under new logits is distributed as softmax(new_logits).
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    new_logits = torch.tensor([-1.0, 2.0, 0.0, 0.0])
    n = 100_000
    observed = gumbel_max(logits, sample_gumbels((n, 4), _gen(20)))
    counterfactual = gumbel_max(new_logits, gumbel_posterior(logits, observed, _gen(21)))
    counts = torch.bincount(counterfactual, minlength=4).double()
    expected = n * torch.softmax(new_logits.double(), -1)
    assert float(((counts - expected) ** 2 / expected).sum()) < 16.27  # chi2(3), 0.999
    # ...while it stays coupled to the observation (not independent of it).
    assert float((counterfactual == observed).double().mean()) > float(
        (torch.softmax(logits, -1) * torch.softmax(new_logits, -1)).sum()
    )


def test_posterior_rejects_bad_observations() -> None:
    logits = torch.zeros(3, 4)
    with pytest.raises(CausalSpritesError, match=r"observed category 4 is out of range"):
        gumbel_posterior(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(CausalSpritesError, match="out of range"):
        gumbel_posterior(logits, torch.tensor([0, -1, 1]))
    with pytest.raises(CausalSpritesError, match="integer"):
        gumbel_posterior(logits, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(CausalSpritesError, match="broadcast"):
        gumbel_posterior(logits, torch.tensor([0, 1]))
    with pytest.raises(CausalSpritesError, match="probability zero"):
        gumbel_posterior(torch.tensor([0.0, -math.inf]), 1)
    with pytest.raises(CausalSpritesError, match="NaN"):
        gumbel_posterior(torch.tensor([0.0, math.nan]), 0)
    with pytest.raises(CausalSpritesError, match="num_samples"):
        gumbel_posterior(logits, torch.zeros(3, dtype=torch.long), num_samples=0)


# --- pixels ------------------------------------------------------------------------------------


def test_pixel_mechanism_thresholds() -> None:
    probs = torch.tensor([0.0, 0.5, 0.5, 1.0])
    x = pixel_mechanism(probs, torch.tensor([0.0, 0.4999, 0.5, 0.99999]))
    assert x.dtype == torch.bool and x.tolist() == [False, True, False, True]


def test_pixel_noise_reproduces_x_exactly() -> None:
    shape = (64, 64, 64)
    probs = torch.rand(shape, generator=_gen(22))
    x = torch.rand(shape, generator=_gen(23)) < 0.5  # any x, also unlikely ones
    uniform = torch.rand(shape, generator=_gen(24))
    u = pixel_noise_posterior(x, probs, uniform)
    assert torch.equal(pixel_mechanism(probs, u), x)
    assert bool(((u >= 0) & (u <= 1)).all())
    # uint8 images work too.
    assert torch.equal(
        pixel_mechanism(probs, pixel_noise_posterior(x.to(torch.uint8), probs, uniform)), x
    )


def test_pixel_noise_edge_probabilities() -> None:
    edge = [0.0, 1.0, float(torch.finfo(torch.float32).tiny), 1e-30, 1 - 2**-24, 0.5, 2**-20]
    probs = torch.tensor(edge).repeat_interleave(4)
    x = torch.tensor([True, False] * 2 * len(edge))
    uniform = torch.tensor([0.0, 0.0, 1 - 2**-24, 1 - 2**-24] * len(edge))  # the extremes of rand
    u = pixel_noise_posterior(x, probs, uniform)
    assert torch.equal(pixel_mechanism(probs, u), x)
    # Only the zero-likelihood case (x = 1, p = 0) leaves [0, 1].
    assert bool(((u >= 0) & (u <= 1))[~(x & (probs == 0))].all())
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        p, uni = probs.to(dtype), uniform.to(dtype)
        assert torch.equal(pixel_mechanism(p, pixel_noise_posterior(x, p, uni)), x), dtype


def test_pixel_noise_posterior_is_uniform_on_the_right_interval() -> None:
    p = 0.3
    n = 400_000
    prior = torch.rand(n, generator=_gen(25), dtype=torch.float64)
    for value, low, high in ((True, 0.0, p), (False, p, 1.0)):
        accepted = prior[pixel_mechanism(torch.tensor(p, dtype=torch.float64), prior) == value]
        uniform = torch.rand(accepted.numel(), generator=_gen(26), dtype=torch.float64)
        ours = pixel_noise_posterior(
            torch.full((accepted.numel(),), value), torch.tensor(p, dtype=torch.float64), uniform
        )
        assert float(ours.min()) >= low and float(ours.max()) <= high
        width = high - low
        se = width / math.sqrt(12 * ours.numel())
        assert float(ours.mean()) == pytest.approx((low + high) / 2, abs=5 * se)
        assert float(ours.var()) == pytest.approx(width**2 / 12, rel=0.02)
        assert _ks_statistic(ours, accepted) < _ks_critical(ours.numel(), accepted.numel())
