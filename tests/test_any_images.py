"""A dataset that is not dSprites, through the model and every causal query: colour squares on a
32x48 canvas (hue, size and position labelled; the background's brightness an unlabelled nuisance
for the style z), a convolutional VAE with the discretised-logistic likelihood, exact abduction."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

HUES = ((220, 40, 40), (40, 200, 60), (50, 70, 230))
SIDES, LEFTS = (6, 10, 14), (6, 16, 26, 36)
SCHEMA = Schema(
    name="squares",
    factors=(
        categorical("hue", ["red", "green", "blue"]),
        categorical("side", SIDES, SIDES, ordered=True),
        categorical("left", LEFTS, LEFTS, ordered=True),
    ),
    image_shape=(32, 48, 3),
)


def render(classes: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """Images (B, 32, 48, 3) uint8 of factor classes (B, 3) on grey backgrounds (B,)."""
    out = np.empty((len(classes), 32, 48, 3), np.uint8)
    for k, ((hue, side, left), grey) in enumerate(zip(classes, brightness, strict=True)):
        out[k] = grey
        size, middle = SIDES[side], LEFTS[left]
        top, start = 16 - size // 2, middle - size // 2
        out[k, top : top + size, start : start + size] = HUES[hue]
    return out


def squares(repeats: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every factor combination `repeats` times: images, classes (N, 3), backgrounds (N,)."""
    classes = np.array(list(itertools.product(range(3), range(3), range(4))) * repeats)
    brightness = np.random.default_rng(seed).integers(60, 180, len(classes))
    return render(classes, brightness), classes, brightness


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> CausalModel:
    images, classes, _ = squares(8, seed=0)
    data = Dataset(SCHEMA, images, classes.astype(np.float64))
    preset = PRESETS["images"]
    config = replace(
        preset,
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(preset.train, max_steps=60, bf16=False, num_eval_images=32),
    )
    out = tmp_path_factory.mktemp("squares")
    record = fit(out, config, data, torch.device("cpu"), progress=False)
    assert np.isfinite(record["test_nelbo"]) and record["test_nelbo"] > 0
    return load_run(out)


def test_the_run_records_the_schema_and_builds_the_image_model(run: CausalModel) -> None:
    assert run.schema == SCHEMA and run.config.factor_schema == SCHEMA
    assert run.model.likelihood is not None and run.model.x_event == (3, 32, 48)


def test_a_counterfactual_with_the_observed_factors_returns_the_image_exactly(
    run: CausalModel,
) -> None:
    images, classes, _ = squares(1, seed=1)
    same = run.counterfactual(images, classes, do={"hue": classes[:, 0]}, seed=0)
    assert same.dtype == np.uint8 and same.shape == images.shape
    np.testing.assert_array_equal(same, images)


def test_one_answer_takes_each_pixel_s_median_noise_and_samples_draw(run: CausalModel) -> None:
    images, classes, _ = squares(1, seed=4)
    do = {"hue": (classes[:, 0] + 1) % 3}
    one = run.counterfactual_query(images, classes, do=do, seed=0)
    median = run.counterfactual_query(images, classes, do=do, seed=5, pixel_noise="median")
    drawn = run.counterfactual_query(images, classes, do=do, seed=0, pixel_noise="draw")
    np.testing.assert_array_equal(one.images, median.images)  # the default; no seed matters
    assert (drawn.images != one.images).any()
    same = run.counterfactual_query(images, classes, do={"hue": classes[:, 0]}, pixel_noise="draw")
    np.testing.assert_array_equal(same.images, images)  # either rule gives the input back
    samples = run.counterfactual_query(images[:3], classes[:3], do={"hue": 2}, num_samples=4)
    assert samples.images.shape == (4, 3, 32, 48, 3)
    assert (samples.images[0] != samples.images[1]).any()  # samples draw the pixel noise
    with pytest.raises(CausalSpritesError, match="unknown pixel noise 'mean'; use median or draw"):
        run.counterfactual_query(images, classes, do=do, pixel_noise="mean")  # type: ignore[arg-type]


def test_every_query_answers_in_the_data_s_own_image_shape(run: CausalModel) -> None:
    images, classes, _ = squares(1, seed=2)
    assert run.reconstruct(images, classes).shape == (36, 32, 48, 3)
    turned = run.counterfactual(images, classes, do={"hue": "blue", "side": 2}, seed=0)
    assert turned.shape == (36, 32, 48, 3) and not np.array_equal(turned, images)
    assert run.edit(images, classes, {"left": "36"}).shape == (36, 32, 48, 3)
    assert run.intervene({"hue": "red"}, num_samples=5, seed=0).shape == (5, 32, 48, 3)
    conditioned = run.condition_query({"side": 2}, num_samples=5, seed=0)
    assert conditioned.images.shape == (5, 32, 48, 3) and (conditioned.classes[:, 1] == 2).all()
    posterior = run.infer(images[:4], top=2)
    assert posterior.classes.shape == (4, 2, 3) and posterior.probabilities.shape == (4, 2)
    read = run.counterfactual(images[:4], do={"hue": "green"}, seed=0)
    assert read.shape == (4, 32, 48, 3)


def test_bad_images_and_values_are_refused_in_one_line(run: CausalModel) -> None:
    images, classes, _ = squares(1, seed=3)
    with pytest.raises(CausalSpritesError, match=r"images must have shape \(B, 32, 48, 3\)"):
        run.reconstruct(images[:, :, :40], classes)
    with pytest.raises(CausalSpritesError, match=r"8-bit pixel values"):
        run.reconstruct(images.astype(np.float64) + 0.5, classes)
    with pytest.raises(CausalSpritesError, match=r"expected an integer in 0\.\.2 or one of red"):
        run.counterfactual(images, classes, do={"hue": "purple"})
    with pytest.raises(CausalSpritesError, match="unknown factor 'shape'"):
        run.intervene({"shape": 1})
    with pytest.raises(CausalSpritesError, match="generic abduction is for binary images"):
        run.counterfactual_query(images, classes, do={"hue": 1}, method="generic")
    with pytest.raises(CausalSpritesError, match="binary dSprites images only"):
        run.counterfactual_distribution(images, classes, do={"hue": 1})


def test_a_run_of_one_image_shape_refuses_another(run: CausalModel) -> None:
    with pytest.raises(CausalSpritesError, match=r"images must have shape \(B, 32, 48, 3\)"):
        run.counterfactual(np.zeros((2, 64, 64), np.uint8), do={"hue": 1})
