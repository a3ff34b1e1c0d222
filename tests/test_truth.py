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
