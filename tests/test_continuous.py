"""Continuous factors through the model and the SCM: a colour square whose side (a continuous
factor, in pixels) follows its horizontal position (continuous, a parent) plus noise, with a
categorical hue; flows for the continuous mechanisms, exact abduction by inversion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.flows import ContinuousMechanism
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

HUES = ((220, 40, 40), (40, 200, 60), (50, 70, 230))
SCHEMA = Schema(
    name="sliding-squares",
    factors=(
        categorical("hue", ["red", "green", "blue"]),
        Factor("left", kind="continuous", low=4.0, high=30.0, unit="px"),
        Factor("side", kind="continuous", low=4.0, high=16.0, unit="px"),
    ),
    image_shape=(32, 48, 3),
)


def side_of(left: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The side's mechanism: wider further right, plus noise (pixels)."""
    return np.clip(5.0 + 0.3 * (left - 4.0) + noise, 4.0, 16.0)


def render(factors: np.ndarray) -> np.ndarray:
    """Images (B, 32, 48, 3) of factor rows (hue, left, side) on a grey background, the square's
    edges anti-aliased (fractional coverage), so continuous values show."""
    columns = np.arange(48) + 0.5
    rows = np.arange(32) + 0.5
    out = np.empty((len(factors), 32, 48, 3), np.float64)
    for k, (hue, left, side) in enumerate(factors):
        across = np.clip(np.minimum(columns - left + 0.5, left + side - columns + 0.5), 0, 1)
        top = 16 - side / 2
        down = np.clip(np.minimum(rows - top + 0.5, top + side - rows + 0.5), 0, 1)
        cover = down[:, None] * across[None, :]
        out[k] = 120 * (1 - cover[..., None]) + np.array(HUES[int(hue)]) * cover[..., None]
    return np.round(out).astype(np.uint8)


def sliding(num: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, factor rows (N, 3) and the side's recorded noise (N,)."""
    rng = np.random.default_rng(seed)
    hue = rng.integers(0, 3, num)
    left = rng.uniform(4.0, 30.0, num)
    noise = rng.normal(0.0, 0.5, num)
    factors = np.stack([hue, left, side_of(left, noise)], axis=1)
    return render(factors), factors, noise


def test_a_flow_inverts_exactly_and_is_a_density() -> None:
    torch.manual_seed(0)
    factor = SCHEMA.factor("side")
    flow = ContinuousMechanism(factor, 1)
    context = torch.rand(5, 1)
    value = torch.tensor([4.5, 6.0, 9.0, 12.0, 15.5])
    noise = flow.abduct(value, context)
    torch.testing.assert_close(flow(noise, context), value, atol=1e-4, rtol=0)
    grid = torch.linspace(4.0, 16.0, 4001)
    with torch.no_grad():
        density = flow.log_prob(grid, torch.full((len(grid), 1), 0.3)).exp()
    assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 0.01


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> CausalModel:
    images, factors, _ = sliding(512, seed=0)
    data = Dataset(SCHEMA, images, factors)
    preset = PRESETS["images"]
    config = replace(
        preset,
        graph=(("left", "side"),),
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(preset.train, max_steps=60, bf16=False, num_eval_images=32),
    )
    out = tmp_path_factory.mktemp("sliding")
    record = fit(out, config, data, torch.device("cpu"), progress=False)
    assert np.isfinite(record["test_nelbo"])
    return load_run(out)


def test_the_run_has_flows_for_the_continuous_factors(run: CausalModel) -> None:
    assert run.schema == SCHEMA
    assert set(run.model.flows) == {"left", "side"}


def test_a_counterfactual_with_the_observed_values_returns_the_image_exactly(
    run: CausalModel,
) -> None:
    images, factors, _ = sliding(6, seed=1)
    same = run.counterfactual(images, factors, do={"left": factors[:, 1]}, seed=0)
    np.testing.assert_array_equal(same, images)


def test_do_on_a_continuous_parent_recomputes_its_child_from_the_abducted_noise(
    run: CausalModel,
) -> None:
    images, factors, _ = sliding(6, seed=2)
    result = run.counterfactual_query(images, factors, do={"left": 20.0}, seed=0)
    cf = np.asarray(result.counterfactual, dtype=np.float64)
    np.testing.assert_allclose(cf[:, 1], 20.0)
    np.testing.assert_array_equal(cf[:, 0], factors[:, 0])  # hue is no descendant
    flow = run.model.flow("side")
    with torch.no_grad():
        scaled = torch.tensor((factors[:, 1:2] - 4.0) / 26.0, dtype=torch.float32)
        noise = flow.abduct(torch.tensor(factors[:, 2], dtype=torch.float32), scaled)
        expected = flow(noise, torch.full((6, 1), 16.0 / 26.0))
    np.testing.assert_allclose(cf[:, 2], expected.numpy(), rtol=1e-4)


def test_a_continuous_value_out_of_range_is_refused(run: CausalModel) -> None:
    images, factors, _ = sliding(2, seed=3)
    with pytest.raises(CausalSpritesError, match="out of its range"):
        run.counterfactual(images, factors, do={"left": 99.0})


def test_intervening_on_a_continuous_parent_moves_the_child_as_its_flow_says(
    run: CausalModel,
) -> None:
    result = run.intervene_query({"left": 25.0}, num_samples=4, seed=0)
    assert result.images.shape == (4, 32, 48, 3)
    np.testing.assert_allclose(result.classes[:, 1], 25.0)
    summary = result.continuous["side"]
    assert summary["draws"] == 20_000 and summary["q05"] <= summary["q50"] <= summary["q95"]
    flow = run.model.flow("side")
    with torch.no_grad():  # the flow's own median at left = 25: its noise's median is 0
        median = flow(torch.zeros(1), torch.full((1, 1), 21.0 / 26.0))
    assert abs(summary["q50"] - float(median)) < 0.1 * summary["sd"] + 0.05
    np.testing.assert_allclose(result.marginals["hue"].sum(), 1.0)


def test_conditioning_on_a_continuous_range_keeps_only_rows_inside_it(run: CausalModel) -> None:
    result = run.condition_query({"side": (8.0, 10.0)}, num_samples=3, seed=0)
    assert ((result.classes[:, 2] >= 8.0) & (result.classes[:, 2] <= 10.0)).all()
    summary = result.continuous["side"]
    assert summary["q05"] >= 8.0 and summary["q95"] <= 10.0
    with pytest.raises(CausalSpritesError, match="is too rare"):
        run.condition_query({"side": (15.999, 16.0), "left": (4.0, 4.01)}, num_samples=1)


def test_the_readout_s_spread_is_never_below_q_s_own(run: CausalModel) -> None:
    from causal_sprites.model.refine import propose
    from causal_sprites.scm.inputs import as_images

    images, _, _ = sliding(8, seed=4)
    posterior = run.infer(images, top=2)
    with torch.no_grad():
        x = as_images(images, SCHEMA)
        _, scales = propose(run.model, x, run.model.features(x))
    assert np.isnan(posterior.spread[:, 0]).all()  # hue is categorical
    assert (posterior.spread[:, 1:] >= scales.numpy() - 1e-6).all()
    assert (posterior.mode[:, 1] >= 4.0).all() and (posterior.mode[:, 1] <= 30.0).all()
