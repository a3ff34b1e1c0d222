"""Counterfactual soundness metrics (Monteiro et al. 2023): each scores a perfect, a useless and a
duplicated input as it should. "Duplicated" is the identity model, whose output copies its input:
it composes and reverses perfectly, preserves everything and is never effective; stacking a batch
on itself must not move any score."""

import numpy as np
import pytest

from causal_sprites.data.factors import FACTORS, SCHEMA, SIZES
from causal_sprites.data.render import render
from causal_sprites.metrics import (
    class_distance,
    composition,
    effectiveness,
    factor_matches,
    ground_truth_fidelity,
    label_distribution,
    oracle_accuracy,
    preservation,
    preserved_mask,
    reversibility,
    total_variation,
)


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """64 random factual classes (B, 5) and their images."""
    rng = np.random.default_rng(0)
    classes = np.stack([rng.integers(0, size, 64) for size in SIZES], -1)
    return classes, render(classes)


def _intervene(classes: np.ndarray, factor: str) -> tuple[np.ndarray, np.ndarray]:
    """do(factor = another value) on every row: intended classes and the intervened mask."""
    column = FACTORS.index(factor)
    intended = classes.copy()
    intended[:, column] = (classes[:, column] + SIZES[column] // 2) % SIZES[column]
    mask = np.zeros(classes.shape, dtype=bool)
    mask[:, column] = True
    return intended, mask


def _twice(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.concatenate([a, a]) for a in arrays]


def test_ground_truth_fidelity(batch: tuple[np.ndarray, np.ndarray]) -> None:
    classes, images = batch
    intended, _ = _intervene(classes, "posX")
    truth = render(intended)
    assert ground_truth_fidelity(truth, truth) == {"iou": 1.0, "pixel_error": 0.0}
    useless = ground_truth_fidelity(np.zeros_like(truth), truth)
    assert useless["iou"] == 0.0 and useless["pixel_error"] == truth.sum() / len(truth)
    identity = ground_truth_fidelity(images, truth)
    assert identity["iou"] < 0.6
    assert ground_truth_fidelity(*_twice(images, truth)) == pytest.approx(identity)


@pytest.mark.parametrize("factor", FACTORS)
def test_effectiveness(batch: tuple[np.ndarray, np.ndarray], factor: str) -> None:
    classes, _ = batch
    intended, mask = _intervene(classes, factor)
    perfect = effectiveness(intended, intended, mask, SCHEMA)
    assert perfect == {factor: 1.0, "overall": 1.0}
    assert effectiveness(classes, intended, mask, SCHEMA)[factor] == 0.0  # identity: never
    assert effectiveness(*_twice(intended, intended, mask), SCHEMA) == perfect
    column = FACTORS.index(factor)
    off_by_one = intended.copy()
    values = off_by_one[:, column]
    off_by_one[:, column] = np.where(values + 1 < SIZES[column], values + 1, values - 1)
    assert effectiveness(off_by_one, intended, mask, SCHEMA, tolerance=None)["overall"] == 0.0
    expected = 1.0 if factor in ("orientation", "posX", "posY") else 0.0
    assert effectiveness(off_by_one, intended, mask, SCHEMA)["overall"] == expected


def test_preservation(batch: tuple[np.ndarray, np.ndarray]) -> None:
    classes, _ = batch
    intended, mask = _intervene(classes, "shape")
    keep = preserved_mask(mask, [("shape", "scale")], FACTORS)
    assert not keep[:, :2].any() and keep[:, 2:].all()
    perfect = preservation(intended, classes, keep, SCHEMA)
    assert perfect["overall"] == 1.0 and set(perfect) == {"orientation", "posX", "posY", "overall"}
    useless = preservation((classes + 7) % np.array(SIZES), classes, keep, SCHEMA)
    assert useless["overall"] == 0.0
    assert preservation(classes, classes, keep, SCHEMA)["overall"] == 1.0  # identity: all kept
    assert preservation(*_twice(intended, classes, keep), SCHEMA) == perfect
    nothing = preservation(classes, classes, np.zeros_like(keep), SCHEMA)
    assert np.isnan(nothing["overall"]) and set(nothing) == {"overall"}


def test_preserved_mask_follows_descendants() -> None:
    intervened = np.zeros((2, 5), bool)
    intervened[0, 0] = True  # do(shape) in row 0, do(posX) in row 1
    intervened[1, 3] = True
    chain = [("shape", "scale"), ("scale", "posX")]
    keep = preserved_mask(intervened, chain, FACTORS)
    np.testing.assert_array_equal(keep[0], [False, False, True, False, True])
    np.testing.assert_array_equal(keep[1], [True, True, True, False, True])


def test_composition(batch: tuple[np.ndarray, np.ndarray]) -> None:
    _, images = batch
    perfect = composition(images, np.stack([images] * 10))
    np.testing.assert_array_equal(perfect, np.ones(10))
    blank = np.zeros_like(images)
    np.testing.assert_array_equal(composition(images, np.stack([blank] * 10)), np.zeros(10))
    drifting = np.stack([np.roll(images, t, axis=-1) for t in range(1, 11)])
    curve = composition(images, drifting)
    assert curve[0] > curve[-1] and curve[-1] < 0.5
    doubled = composition(np.concatenate([images] * 2), np.concatenate([drifting] * 2, axis=1))
    np.testing.assert_allclose(doubled, curve)


def test_reversibility(batch: tuple[np.ndarray, np.ndarray]) -> None:
    _, images = batch
    assert reversibility(images, images) == 1.0
    assert reversibility(images, 1 - images) == 0.0
    shifted = np.roll(images, 2, axis=-2)
    assert reversibility(*_twice(images, shifted)) == pytest.approx(reversibility(images, shifted))


def test_total_variation() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    p = label_distribution(labels, 4)
    np.testing.assert_allclose(p, [1 / 6, 2 / 6, 3 / 6, 0])
    assert total_variation(p, p) == 0.0
    assert total_variation(p, label_distribution(np.array([3, 3]), 4)) == pytest.approx(1.0)
    assert total_variation(label_distribution(np.tile(labels, 2), 4), p) == pytest.approx(0.0)
    assert total_variation([1, 1], [3, 1]) == pytest.approx(0.25)  # normalised first


def test_class_distance_wraps_orientation_and_matches_know_symmetry() -> None:
    orientation, posx = SCHEMA.factor("orientation"), SCHEMA.factor("posX")
    assert class_distance(orientation, np.array([0]), np.array([39]))[0] == 0  # 0 = 2 pi
    assert class_distance(orientation, np.array([1]), np.array([38]))[0] == 2
    assert class_distance(posx, np.array([1]), np.array([31]))[0] == 30
    # A quarter turn is 9.75 steps: classes 0 and 10 draw (almost) the same square, not heart.
    predicted = np.array([[0, 0, 10, 5, 5], [2, 0, 10, 5, 5]])
    target = np.array([[0, 0, 0, 6, 7], [2, 0, 0, 6, 7]])
    np.testing.assert_array_equal(
        factor_matches(predicted, target, SCHEMA, {"posX": 1}, symmetric=True),
        [[True, True, True, True, False], [True, True, False, True, False]],
    )
    assert not factor_matches(predicted, target, SCHEMA)[:, 2].any()  # not without symmetry


def test_oracle_accuracy(batch: tuple[np.ndarray, np.ndarray]) -> None:
    classes, _ = batch
    perfect = oracle_accuracy(classes, classes, SCHEMA)
    assert set(perfect.values()) == {1.0}
    near = classes.copy()
    near[:, 3] = np.clip(near[:, 3] + 1, 0, 31)
    scores = oracle_accuracy(near, classes, SCHEMA)
    assert scores["posX_within_1"] == 1.0 and scores["posX"] < 0.1 and scores["shape"] == 1.0
    assert "orientation_mod_symmetry" in scores and "scale_within_1" not in scores
    assert oracle_accuracy(*_twice(near, classes), SCHEMA) == scores
