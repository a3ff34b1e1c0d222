"""The oracle of any dataset (`data_oracle`): it learns to read the pendulum's continuous factors
and a categorical factor off the pixels of rows the benchmark never queries, is kept per dataset
file and configuration and read back bit for bit, and refuses a budget of no steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from causal_sprites.benchmark_queries import SPLIT_SEED, TEST_FRACTION
from causal_sprites.data import pendulum
from causal_sprites.data.continuous_variants import sample_continuous
from causal_sprites.data.dataset import random_split
from causal_sprites.data.load import load_data
from causal_sprites.data.variant_spec import load_any, parse_any
from causal_sprites.data_oracle import DataOracleConfig, cached_oracle, train_data_oracle
from causal_sprites.errors import CausalSpritesError
from causal_sprites.truth import truth_of

STEPS = 100


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> object:
    path, _ = pendulum.write(tmp_path_factory.mktemp("oracle") / "p.npz", 1000, progress=False)
    return load_data(path)


def test_it_reads_continuous_factors_far_better_than_their_mean(data: object) -> None:
    oracle = train_data_oracle(data, DataOracleConfig(steps=STEPS))
    _, test_rows = random_split(len(data), TEST_FRACTION, SPLIT_SEED)  # type: ignore[arg-type]
    factors = np.asarray(data.factors(test_rows))  # type: ignore[attr-defined]
    read = oracle.predict(data.images(test_rows))  # type: ignore[attr-defined]
    error = np.abs(read - factors).mean(0)
    baseline = np.abs(factors - factors.mean(0)).mean(0)
    assert np.all(error < 0.25 * baseline), (error, baseline)
    assert oracle.info["held_out"]["pendulum_angle"] < 0.25 * baseline[0]
    assert oracle.features(data.images(test_rows[:5])).shape == (5, 256)  # type: ignore[attr-defined]


def test_it_reads_a_categorical_factor(tmp_path: Path) -> None:
    """On dSprites-like binary images of 3 shapes it reads the shape above chance (1/3) after a
    few steps, and a continuous position to a tenth of its range."""
    spec = load_any(Path(__file__).parents[1] / "examples" / "variants" / "chain_continuous.yaml")
    small = parse_any({**spec.to_dict(), "num_samples": 1500})
    chain = load_data(sample_continuous(small, tmp_path / "chain.npz"))  # type: ignore[arg-type]
    oracle = train_data_oracle(chain, DataOracleConfig(steps=STEPS))
    assert oracle.info["held_out"]["shape"] > 0.45  # 75 held-out rows: chance + 2 sd
    assert oracle.info["held_out"]["posX"] < 0.1  # posX runs from 0 to 1


def test_it_is_trained_once_per_file_and_read_back(
    data: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAUSAL_SPRITES_DATA", str(tmp_path))
    source = Path(data.path)  # type: ignore[attr-defined]
    config = DataOracleConfig(steps=5)
    first = cached_oracle(data, source, config)
    (kept,) = (tmp_path / "oracles").iterdir()
    second = cached_oracle(data, source, config)
    images = data.images(np.arange(8))  # type: ignore[attr-defined]
    np.testing.assert_array_equal(first.predict(images), second.predict(images))
    assert second.info == first.info and len(list((tmp_path / "oracles").iterdir())) == 1
    cached_oracle(data, source, DataOracleConfig(steps=6))  # another budget: another oracle
    assert len(list((tmp_path / "oracles").iterdir())) == 2 and kept.is_dir()


def test_no_steps_is_refused(data: object) -> None:
    with pytest.raises(CausalSpritesError, match="oracle steps must be >= 1"):
        train_data_oracle(data, DataOracleConfig(steps=0))


def test_renders_under_do_keep_it_from_reading_one_factor_off_another(data: object) -> None:
    """Trained on observational images alone, the oracle reads the pendulum's shadow where the
    angles put it; with half of each batch rendered under a random do() by the generator, it
    reads a shadow moved by hand."""
    truth = truth_of(data)
    rng = np.random.default_rng(1)
    rows = np.arange(64)
    factor = data.schema.factor("shadow_position")  # type: ignore[attr-defined]
    moved = rng.uniform(factor.low, factor.high, len(rows))
    _, images = truth.counterfactual(rows, {"shadow_position": moved})  # type: ignore[union-attr]
    errors = {}
    for given in (None, truth):
        oracle = train_data_oracle(data, DataOracleConfig(steps=3 * STEPS), truth=given)
        read = oracle.predict(images)[:, data.schema.index("shadow_position")]  # type: ignore[attr-defined]
        errors[given is not None] = np.abs(read - moved).mean()
    assert "held_out_intervened" in oracle.info
    assert errors[True] < 0.5 * errors[False], errors
