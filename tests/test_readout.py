"""Reading factors off pixels: the posterior p(y | x) of the pretrained model, its search, its
symmetric sprites, out-of-distribution images, and the `infer` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from causal_sprites.data.factors import (
    EQUIVALENT_ORIENTATIONS,
    FACTORS,
    NUM_IMAGES,
    SCHEMA,
    SIZES,
    index_to_classes,
)
from causal_sprites.data.render import render
from causal_sprites.discovery import discover, discover_from_images
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import HIGHEST_THRESHOLD, FactorPosterior, likelihood_range
from causal_sprites.runs import LIKELIHOOD_FILE, read_likelihood_range
from causal_sprites.scm.queries import CausalModel
from tests.cli_run import run

SQUARE, ELLIPSE, HEART = 0, 1, 2


def sprites(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random dSprites images (B, 64, 64) and their classes (B, 5), drawn by the generator."""
    rows = np.random.default_rng(seed).choice(NUM_IMAGES, count, replace=False)
    classes = index_to_classes(rows)
    return render(classes), classes[:, 1:]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum((-1, -2)) / np.maximum((a | b).sum((-1, -2)), 1)


def test_the_posterior_mode_draws_the_true_image(model: CausalModel) -> None:
    images, classes = sprites(64, seed=5)
    posterior = model.infer(images, top=3)
    assert posterior.classes.shape == (64, 3, 5) and posterior.probabilities.shape == (64, 3)
    assert np.all(np.diff(posterior.probabilities, axis=1) <= 1e-12)  # best first
    assert np.all(posterior.probabilities.sum(1) <= 1 + 1e-9)
    drawn = render(np.concatenate([np.zeros((64, 1), np.int64), posterior.mode], 1))
    assert np.all(iou(drawn, images) >= 0.98)
    exact = posterior.mode[:, [0, 1, 3, 4]] == classes[:, [0, 1, 3, 4]]
    assert exact.mean() >= 0.99
    np.testing.assert_array_equal(model.infer_labels(images), posterior.mode)
    assert not model.out_of_distribution(posterior).any()


def test_a_wrong_classifier_does_not_decide(
    model: CausalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier whose top-1 is wrong on every factor (the truth only second, at 5 %): the
    decoder's likelihood must still find the true factors."""
    images, classes = sprites(24, seed=7)
    wrong = classes.copy()
    wrong[:, 0] = (classes[:, 0] + 1) % 3
    wrong[:, 1] = np.where(classes[:, 1] > 0, classes[:, 1] - 1, 1)
    wrong[:, 2] = (classes[:, 2] + 5) % 40
    wrong[:, 3] = np.where(classes[:, 3] < 31, classes[:, 3] + 1, 30)
    wrong[:, 4] = np.where(classes[:, 4] > 0, classes[:, 4] - 1, 1)

    def misleading(x: torch.Tensor, features: torch.Tensor | None = None) -> list[torch.Tensor]:
        logits = []
        for i, size in enumerate(SIZES):
            probs = torch.full((len(x), size), 1e-4)
            probs[torch.arange(len(x)), torch.as_tensor(wrong[:, i])] = 0.9
            probs[torch.arange(len(x)), torch.as_tensor(classes[:, i])] = 0.05
            logits.append(probs.log())
        return logits

    monkeypatch.setattr(model.model, "classify", misleading)
    mode = model.infer_labels(images)
    drawn = render(np.concatenate([np.zeros((24, 1), np.int64), mode], 1))
    assert np.all(iou(drawn, images) >= 0.98)
    assert (mode[:, [0, 1, 3, 4]] == classes[:, [0, 1, 3, 4]]).all()


def test_symmetric_sprites_get_several_orientations(model: CausalModel) -> None:
    square = render(np.array([[0, SQUARE, 0, 0, 16, 16]]))
    heart = render(np.array([[0, HEART, 5, 0, 16, 16]]))
    posterior = model.infer(np.concatenate([square, heart]), top=6)
    square_turns = {int(c[2]) for c, p in zip(*_rows(posterior, 0), strict=True) if p > 0.05}
    assert {0, 39} <= square_turns and len(square_turns) >= 3  # 0 = 2 pi, and quarter turns
    heart_turns = {int(c[2]): p for c, p in zip(*_rows(posterior, 1), strict=True) if p > 0.05}
    assert set(heart_turns) == {0, 39}  # one image, two names: half each
    assert heart_turns[0] == pytest.approx(0.5, abs=0.02)
    assert (
        posterior.classes[1, :2, [0, 1, 3, 4]] == [[HEART] * 2, [5] * 2, [16] * 2, [16] * 2]
    ).all()


def _rows(posterior: FactorPosterior, b: int) -> tuple[np.ndarray, np.ndarray]:
    return posterior.classes[b], posterior.probabilities[b]


def test_equivalent_orientations_follow_each_shapes_symmetry() -> None:
    assert EQUIVALENT_ORIENTATIONS[HEART][5] == [5]
    assert EQUIVALENT_ORIENTATIONS[HEART][0] == [0, 39]
    assert EQUIVALENT_ORIENTATIONS[ELLIPSE][0] == [0, 19, 20, 39]  # half a turn is 19.5 steps
    assert {10, 19, 20, 29} <= set(EQUIVALENT_ORIENTATIONS[SQUARE][0])  # a quarter is 9.75


def test_out_of_distribution_images_are_flagged_and_refused(model: CausalModel) -> None:
    assert model.likelihood_range is not None  # the pretrained run ships its range
    one, _ = sprites(2, seed=3)
    noise = (np.random.default_rng(0).random((64, 64)) < 0.5).astype(np.uint8)
    odd = np.stack([np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8), noise])
    odd = np.concatenate([odd, np.maximum(one[0], one[1])[None]])
    posterior = model.infer(np.concatenate([one, odd]))
    assert model.out_of_distribution(posterior).tolist() == [False] * 2 + [True] * 4
    with pytest.raises(CausalSpritesError, match="image 0 is unlike any dSprites image"):
        model.counterfactual(odd[:1], do={"shape": "heart"})
    assert model.counterfactual(one, do={"shape": "heart"}).shape == (2, 64, 64)


def test_counterfactual_samples_go_over_the_posterior(model: CausalModel) -> None:
    square = render(np.array([[0, SQUARE, 2, 0, 10, 20]]))
    result = model.counterfactual_query(square, None, {"posX": 25}, num_samples=40, seed=0)
    assert result.inferred and result.images.shape == (40, 1, 64, 64)
    turns = set(result.counterfactual[:, 0, 2].tolist())
    assert len(turns) >= 2  # the square's equivalent orientations are all drawn
    assert (result.counterfactual[:, 0, 3] == 25).all()
    assert (result.counterfactual[:, 0, [0, 1, 4]] == [SQUARE, 2, 20]).all()


def test_posterior_draws_of_independent_factors_find_no_edge() -> None:
    """A stand-in exact posterior of a world where a square's quarter turns (10 grid steps) draw
    the same image: drawing from it keeps orientation independent of shape, while one canonical
    turn per shape (the quarter turn's remainder) makes a shape-orientation edge out of nothing."""
    rng = np.random.default_rng(0)
    truth = np.stack([rng.integers(0, s, 20_000) for s in SIZES], 1)

    class Reader:
        schema = SCHEMA

        def infer(self, x: np.ndarray, top: int = 5) -> FactorPosterior:
            classes = np.repeat(truth[:, None], 4, 1)
            probs = np.zeros((len(truth), 4))
            for b, row in enumerate(truth):
                turns = [(row[2] + 10 * q) % 40 for q in range(4 if row[0] == SQUARE else 1)]
                classes[b, : len(turns), 2] = turns
                probs[b, : len(turns)] = 1 / len(turns)
            return FactorPosterior(
                classes, probs, np.zeros(len(x)), np.ones(len(x)), np.ones(len(x), bool)
            )

    drawn = discover_from_images(Reader(), np.zeros((len(truth), 64, 64), np.uint8))
    assert drawn["edges"] == [] and drawn["factors"] == list(FACTORS)
    canonical = truth.copy()
    canonical[:, 2] = np.where(truth[:, 0] == SQUARE, truth[:, 2] % 10, truth[:, 2])
    found = discover(canonical, names=FACTORS)["edges"]
    assert {"from": "shape", "to": "orientation", "directed": False} in found


def test_likelihood_range_threshold_and_malformed_file(tmp_path: Path) -> None:
    usual = likelihood_range(np.linspace(-20, 0, 101))
    assert usual["low"] == pytest.approx(-19.8) and usual["median"] == pytest.approx(-10.0)
    assert usual["threshold"] == pytest.approx(-18.0 - 20 * 8.0)
    # A near-perfect model: the quantile rule would refuse real images 11 nats down; capped.
    assert likelihood_range(np.linspace(-1, 0, 101))["threshold"] == HIGHEST_THRESHOLD
    assert read_likelihood_range(tmp_path) is None
    recorded = {"low": -1.5, "median": -0.01, "high": 0.0, "threshold": -10.5}
    (tmp_path / LIKELIHOOD_FILE).write_text(json.dumps(recorded))  # before the cap existed
    assert read_likelihood_range(tmp_path) == {**recorded, "threshold": HIGHEST_THRESHOLD}
    (tmp_path / LIKELIHOOD_FILE).write_text("{not json")
    with pytest.raises(CausalSpritesError, match=r"likelihood\.json is malformed"):
        read_likelihood_range(tmp_path)


def test_infer_command(tmp_path: Path) -> None:
    out, _ = run("infer", "pretrained", "--index", 0, "--index", 700_000, "--top", 4, "--json")
    result = json.loads(out)
    first, second = result["images"]
    assert first["index"] == 0 and len(first["candidates"]) == 4
    assert first["candidates"][0]["factors"]["shape"] == 0 and not first["out_of_distribution"]
    assert second["candidates"][0]["factors"] == second["true"]
    assert first["classifier_agrees"] and second["classifier_agrees"]
    assert result["likelihood_range"]["threshold"] < result["likelihood_range"]["median"]
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(blank)
    text, _ = run("infer", "pretrained", "--image", blank)
    assert "warning: unlike any dSprites image" in text
    _, err = run("counterfactual", "pretrained", "--image", blank, "--do", "shape=heart", code=1)
    assert "unlike any dSprites image" in err


@pytest.mark.parametrize(
    "args",
    [["infer", "pretrained"], ["infer", "pretrained", "--index", 0, "--image", "x.png"]],
)
def test_infer_needs_exactly_one_source(args: list[object]) -> None:
    run(*args, code=2)


def test_infer_bad_input_fails_in_one_line(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(gray)
    _, err = run("infer", "pretrained", "--image", gray, code=1)
    assert "is not binary" in err
    _, err = run("infer", "pretrained", "--index", NUM_IMAGES, code=1)
    assert "out of range" in err or "index" in err
    run("infer", "pretrained", "--index", 0, "--top", 0, code=2)
