"""`truth.py`: the known truth of a data set answers do(observed) with the rows themselves and
recomputes descendants from the recorded noise."""

import numpy as np
import pytest

from causal_sprites.data import pendulum
from causal_sprites.errors import CausalSpritesError
from causal_sprites.truth import truth_of


def test_the_pendulum_truth_keeps_observed_rows_and_moves_the_shadow() -> None:
    data = pendulum.generate(12, shadow_noise=0.2, seed=3)
    truth = truth_of(data)
    assert truth is not None
    rows = np.arange(2, 8)
    factual = data.factors(rows)
    factors, images = truth.counterfactual(rows, {"light_angle": factual[:, 1]})
    assert np.array_equal(factors, factual)
    assert np.array_equal(images, data.images(rows))
    moved, _ = truth.counterfactual(rows, {"pendulum_angle": np.full(len(rows), 10.0)})
    noise = {k: data.extra[k][rows] for k in pendulum.NOISE_KEYS.values()}
    expected = pendulum.scene_factors(np.full(len(rows), 10.0), factual[:, 1], noise)
    np.testing.assert_allclose(moved, expected)


def test_a_do_outside_the_range_is_refused_and_plain_data_has_no_truth() -> None:
    data = pendulum.generate(4, seed=0)
    truth = truth_of(data)
    assert truth is not None
    with pytest.raises(CausalSpritesError, match="outside its range"):
        truth.counterfactual(np.arange(2), {"pendulum_angle": np.array([90.0, 0.0])})
    data.extra.clear()
    assert truth_of(data) is None


def test_the_pendulum_s_interventional_draws_follow_the_scene_s_formula() -> None:
    data = pendulum.generate(4, shadow_noise=0.2, seed=0)
    truth = truth_of(data)
    assert truth is not None and truth.edges == pendulum.EDGES
    drawn = truth.interventional({"pendulum_angle": 12.5}, 4000, seed=5)
    assert drawn.shape == (4000, 4)
    np.testing.assert_array_equal(drawn[:, 0], 12.5)
    low, high = pendulum.LIGHT_RANGE
    assert low <= drawn[:, 1].min() < low + 1 and high - 1 < drawn[:, 1].max() <= high
    length, position = pendulum.shadow(drawn[:, 0], drawn[:, 1])
    for noise in (drawn[:, 2] - length, drawn[:, 3] - position):
        assert np.abs(noise).max() <= 4 * 0.2 + 1e-9  # truncated at 4 SD
        assert abs(noise.std() - 0.2) < 0.01 and abs(noise.mean()) < 0.01
    np.testing.assert_array_equal(truth.interventional({"pendulum_angle": 12.5}, 4000, 5), drawn)
    fixed = truth.interventional({"shadow_length": 5.0, "light_angle": 90.0}, 500, seed=6)
    np.testing.assert_array_equal(fixed[:, 2], 5.0)
    np.testing.assert_array_equal(fixed[:, 1], 90.0)
    assert np.abs(fixed[:, 3] - pendulum.shadow(fixed[:, 0], 90.0)[1]).max() <= 0.8 + 1e-9
    with pytest.raises(CausalSpritesError, match="out of its range"):
        truth.interventional({"light_angle": 140.0}, 10, seed=0)
