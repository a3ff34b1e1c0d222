"""`evaluate --counterfactual` on data whose generator is known (the pendulum): a model that
answers with the truth itself scores no error, and its distributions' Wasserstein-1 sits at the
floor, where a wrong sampler's does not; a small trained run returns its input under do(observed)
pixel for pixel, and the command line gives every score as finite numbers in JSON and text."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS, RunConfig
from causal_sprites.continuous_metrics import factor_readout, regression_leakage, value_error
from causal_sprites.continuous_scores import (
    ContinuousCounterfactualScores,
    run_sampler,
    score_continuous_counterfactuals,
    score_continuous_distributions,
)
from causal_sprites.data import pendulum
from causal_sprites.data.dataset import Dataset, write_dataset
from causal_sprites.data.schema import Factor
from causal_sprites.metrics import PSNR_CAP
from causal_sprites.scm.queries import load_run
from causal_sprites.train import fit
from causal_sprites.truth import KnownGenerator, truth_of
from tests.cli_run import run

NAMES = pendulum.FACTOR_NAMES
ROOTS = NAMES[:2]
SHADOWS = NAMES[2:]


class PerfectRun:
    """A model that answers with the truth itself: counterfactuals are the truth's renders (an
    image's data row found by its pixels), reconstructions the input, the readout each image's
    true factors."""

    name = "the truth's own factors"

    def __init__(self, data: Dataset, truth: KnownGenerator) -> None:
        self.config, self.truth = RunConfig(), truth
        self.known: dict[bytes, tuple[int, np.ndarray]] = {}
        rows = np.arange(len(data))
        self._remember(data.images(rows), rows, data.factors(rows))

    def _remember(self, images: np.ndarray, rows: np.ndarray, factors: np.ndarray) -> None:
        for image, row, values in zip(images, rows, factors, strict=True):
            self.known[image.tobytes()] = (int(row), values)

    def counterfactual_query(
        self, images: np.ndarray, labels: Any, do: dict[str, np.ndarray], seed: int = 0
    ) -> SimpleNamespace:
        rows = np.array([self.known[image.tobytes()][0] for image in images])
        factors, out = self.truth.counterfactual(rows, do)
        self._remember(out, rows, factors)
        return SimpleNamespace(images=out, counterfactual=factors)

    def reconstruct(self, images: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return images

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.array([self.known[image.tobytes()][1] for image in images])


def generator(truth: KnownGenerator, shift: float = 0.0) -> Any:
    """A sampler drawing from the truth itself (other seeds), the shadow position moved by
    `shift` world units: a deliberately wrong sampler when not 0."""

    def draw(do: dict[str, float], num_samples: int, seed: int) -> np.ndarray:
        drawn = truth.interventional(do, num_samples, seed + 1000)
        drawn[:, NAMES.index("shadow_position")] += shift
        return drawn

    return draw


@pytest.fixture(scope="module")
def small() -> tuple[Dataset, KnownGenerator]:
    data = pendulum.generate(60, shadow_noise=0.2, seed=1)
    truth = truth_of(data)
    assert truth is not None
    return data, truth


def finite(value: Any) -> bool:
    """Every number in a JSON value is finite."""
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_the_truth_itself_scores_no_error(small: tuple[Dataset, KnownGenerator]) -> None:
    data, truth = small
    perfect = PerfectRun(data, truth)
    scores = score_continuous_counterfactuals(perfect, data, truth, 4, reader=perfect)
    assert scores.ground_truth_mae == 0.0 and scores.ground_truth_psnr == PSNR_CAP
    assert scores.ground_truth_iou is None and scores.copy_iou is None  # RGB, not binary
    assert math.isnan(scores.mae_ratio)  # 0 / 0: the truth reconstructs itself exactly
    assert scores.effectiveness_mae == dict.fromkeys(NAMES, 0.0)
    assert scores.descendant_mae == dict.fromkeys(SHADOWS, 0.0)
    assert scores.counterfactual_factor_mae == dict.fromkeys(SHADOWS, 0.0)
    assert scores.preservation_mae == dict.fromkeys(NAMES, 0.0)
    assert scores.reversibility_mae == 0.0 and scores.composition_exact_10 == 1.0
    angle = scores.per_factor["pendulum_angle"]
    assert angle.copy_mae > 0 and angle.copy_psnr < PSNR_CAP  # the input is not the answer
    assert set(angle.descendant_mae) == set(SHADOWS) and set(angle.preservation_mae) == {
        "light_angle"
    }
    length = scores.per_factor["shadow_length"]
    assert length.descendant_mae == {} and set(length.preservation_mae) == {*ROOTS, SHADOWS[1]}
    assert scores.reader == perfect.name and scores.factual_labels == "given"
    assert not any("iou" in text for text in scores.lines())


def test_w1_of_a_wrong_sampler_is_above_the_floor(small: tuple[Dataset, KnownGenerator]) -> None:
    _, truth = small
    right = score_continuous_distributions(None, truth, 400, sampler=generator(truth))
    wrong = score_continuous_distributions(None, truth, 400, sampler=generator(truth, 1.0))
    assert [(e.set, round(e.value, 4)) for e in right.entries] == [
        (name, round(low + q * (high - low), 4))
        for name, (low, high) in (("pendulum_angle", (-36, 38.7)), ("light_angle", (54, 132.3)))
        for q in (0.25, 0.5, 0.75)
    ]
    assert set(right.entries[0].w1) == {"light_angle", *SHADOWS}  # not the intervened factor
    assert right.w1_floor == wrong.w1_floor  # the floor is the truth's alone
    floor = right.w1_floor["shadow_position"]
    assert 0 < floor < 0.5 < wrong.w1["shadow_position"]
    assert right.w1["shadow_position"] < 0.5
    assert wrong.w1["shadow_length"] == right.w1["shadow_length"]


def test_continuous_metrics() -> None:
    angle = Factor("angle", "continuous", low=0.0, high=360.0, cyclic=True)
    np.testing.assert_allclose(value_error(angle, np.array([350.0, 10]), np.array([10.0, 30])), 20)
    hue = Factor("hue", "categorical", classes=("red", "green"))
    np.testing.assert_array_equal(value_error(hue, np.array([0, 1]), np.array([0, 0])), [0, 1])
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(400, 3))
    values = np.c_[2 * codes[:, 0] + 1, rng.normal(size=400)]
    leakage = regression_leakage(codes, values, ["told", "hidden"])
    assert leakage["told"] > 0.999 and leakage["hidden"] < 0.05
    schema = pendulum.SCHEMA
    truth = np.array([[0.0, 90.0, 5.0, 10.0], [1.0, 100.0, 6.0, 11.0]])
    read = factor_readout(truth + np.array([0.5, -1.0, 0.0, 2.0]), truth, schema)
    assert read["mean_abs_error"] == dict(zip(NAMES, [0.5, 1.0, 0.0, 2.0], strict=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Dataset]:
    """300 pendulum images (shadow noise 0.2) in a dataset file and a run trained 20 steps on
    them with the true graph."""
    root = tmp_path_factory.mktemp("pendulum")
    data = pendulum.generate(300, shadow_noise=0.2, seed=0)
    write_dataset(root / "pendulum.npz", data.images(slice(None)), data.factors(slice(None)),
                  data.schema, extra=data.extra)  # fmt: skip
    preset = PRESETS["images"]
    config = replace(
        preset,
        graph=pendulum.EDGES,
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(
            preset.train, max_steps=20, bf16=False, num_eval_images=32, test_fraction=0.1
        ),
    )
    fit(root / "run", config, data, torch.device("cpu"), progress=False)
    return root / "pendulum.npz", root / "run", data


@pytest.fixture(scope="module")
def scores(trained: tuple[Path, Path, Dataset]) -> ContinuousCounterfactualScores:
    _, run_dir, data = trained
    truth = truth_of(data)
    assert truth is not None
    model = load_run(run_dir)
    drawn = run_sampler(model)({"light_angle": 100.0}, 50, 3)
    assert drawn.shape == (50, 4) and (drawn[:, 1] == 100.0).all()
    np.testing.assert_array_equal(run_sampler(model)({"light_angle": 100.0}, 50, 3), drawn)
    return score_continuous_counterfactuals(model, data, truth, num_images=4)


def test_a_trained_run_returns_its_input_under_do_observed(
    scores: ContinuousCounterfactualScores,
) -> None:
    assert scores.composition_exact_1 == 1.0 and scores.composition_exact_10 == 1.0
    assert scores.composition_mae_1 == 0.0 and scores.composition_mae_10 == 0.0
    assert scores.per_factor["pendulum_angle"].copy_mae > 0
    assert scores.ground_truth_mae > 0 and scores.recon_of_truth_mae > 0
    assert scores.mae_ratio == pytest.approx(scores.ground_truth_mae / scores.recon_of_truth_mae)
    assert set(scores.effectiveness_mae) == set(NAMES) and finite(scores.to_json())
    assert "run's own posterior" in scores.reader and scores.num_images_per_factor == 4


def test_evaluate_counterfactual_on_the_pendulum_gives_json_and_text(
    trained: tuple[Path, Path, Dataset],
) -> None:
    data_file, run_dir, _ = trained
    args = ("evaluate", run_dir, "--data", data_file, "--num-images", 8, "--counterfactual",
            "--num-counterfactuals", 2)  # fmt: skip
    record = json.loads(run(*args, "--json")[0])
    for key in ("test_nelbo", "recon_psnr", "regression_mae", "ground_truth_mae",
                "ground_truth_psnr", "recon_of_truth_mae", "mae_ratio", "copy_mae",
                "effectiveness_mae", "effectiveness_median", "descendant_mae", "preservation_mae",
                "counterfactual_factor_mae", "reversibility_mae", "composition_exact_1",
                "composition_exact_10", "per_factor", "distributions"):  # fmt: skip
        assert finite(record[key]), key
    assert set(record["readout"]["posterior"]["mean_abs_error"]) == set(NAMES)
    assert record["factual_labels"] == "given" and record["composition_exact_1"] == 1.0
    assert set(record["per_factor"]) == set(NAMES) and record["ground_truth_iou"] is None
    assert set(record["distributions"]["w1"]) == set(NAMES)
    assert len(record["distributions"]["entries"]) == 6
    text = run(*args)[0]
    assert "effectiveness_mae: pendulum_angle" in text and "w1_floor:" in text
    assert "ground_truth_iou" not in text


def test_continuous_data_without_a_known_truth_is_refused_in_one_line(
    trained: tuple[Path, Path, Dataset],
) -> None:
    data_file, run_dir, data = trained
    plain = data_file.with_name("plain.npz")
    write_dataset(plain, data.images(slice(None)), data.factors(slice(None)), data.schema)
    _, err = run("evaluate", run_dir, "--data", plain, "--counterfactual", code=1)
    assert "true counterfactuals are known" in err and "no recorded generator" in err


def test_factual_labels_read_off_the_pixels_are_said_so(
    trained: tuple[Path, Path, Dataset],
) -> None:
    _, run_dir, data = trained
    truth = truth_of(data)
    assert truth is not None
    scores = score_continuous_counterfactuals(
        load_run(run_dir), data, truth, num_images=2, given_labels=False
    )
    assert scores.factual_labels == "inferred" and finite(scores.to_json())
    assert scores.copy_mae > 0 and set(scores.per_factor) == set(NAMES)
