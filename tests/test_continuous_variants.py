"""Continuous variants of dSprites (issue 21): the spec's sigmoid mechanisms, their exact
inversion, the sampled dataset file, the true counterfactuals rendered from the recorded noise,
discovery of the shipped chain from its labels, and a run trained on it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.special import expit

from causal_sprites.cli.training import default_preset
from causal_sprites.config import PRESETS, ModelConfig
from causal_sprites.data import pendulum
from causal_sprites.data.continuous_spec import ContinuousSpec, Sigmoid
from causal_sprites.data.continuous_variants import (
    SPEC_KEY,
    ContinuousTruth,
    render_factors,
    sample_continuous,
    sample_noise,
    solve,
)
from causal_sprites.data.dataset import load_dataset
from causal_sprites.data.factors import SCHEMA, VALUES
from causal_sprites.data.render import render_values
from causal_sprites.data.variant_spec import load_any, load_graph, load_spec, parse_any
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import factor_matches
from causal_sprites.model.nets import PoseDecoder
from causal_sprites.model.search import SearchSpace
from causal_sprites.model.vae import ConditionalVAE
from tests.cli_run import run

CHAIN = Path(__file__).parents[1] / "examples" / "variants" / "chain_continuous.yaml"
NAMES = ("shape", "scale", "orientation", "posX", "posY")
#: A mixed spec: shape (categorical) sets the scale, the scale sets posX; orientation keeps its
#: 40 classes, posY its 32.
MIXED = {
    "name": "mixed",
    "num_samples": 300,
    "seed": 4,
    "edges": [["shape", "scale"], ["scale", "posX"]],
    "mechanisms": {
        "scale": {"range": [0.5, 1.0], "sigmoid": {"weights": {"shape": [-3, 0, 3]}}},
        "posX": {
            "range": [0.1, 0.9],
            "unit": "width",
            "sigmoid": {"intercept": -2, "weights": {"scale": 4}, "noise_scale": 0.5},
        },
    },
}


@pytest.fixture(scope="module")
def chain() -> ContinuousSpec:
    spec = load_any(CHAIN)
    assert isinstance(spec, ContinuousSpec)
    return spec


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped chain, 2,000 samples, written by the command line."""
    out = tmp_path_factory.mktemp("chain") / "chain.npz"
    stdout, _ = run("data", "variant", CHAIN, "--out", out, "--num-samples", 2000)
    assert stdout.strip() == f"{out}: 2000 samples of chain_continuous (scale->posX,posX->posY)"
    return out


def test_the_shipped_chain_parses_into_sigmoids(chain: ContinuousSpec) -> None:
    assert chain.edges == (("scale", "posX"), ("posX", "posY"))
    assert chain.schema.names == NAMES and chain.schema.continuous == ("scale", "posX", "posY")
    assert chain.schema.factor("orientation").size == 40 and chain.schema.binary
    assert chain.sigmoids["posX"] == Sigmoid(0.0, 1.0, -2.5, {"scale": 5.0}, 1.0)
    assert chain.sigmoids["scale"] == Sigmoid(0.5, 1.0, 0.0, {}, 1.2)
    assert set(chain.tables) == {"shape", "orientation"}
    np.testing.assert_array_equal(chain.tables["orientation"], np.full(40, 1 / 40))
    again = parse_any(json.loads(json.dumps(chain.to_dict())))
    assert isinstance(again, ContinuousSpec)
    assert again.sigmoids == chain.sigmoids and again.schema == chain.schema
    assert load_graph(CHAIN) == chain.edges


def test_a_categorical_parent_takes_one_weight_per_class() -> None:
    spec = parse_any(MIXED)
    assert isinstance(spec, ContinuousSpec)
    assert spec.sigmoids["scale"].weights == {"shape": (-3.0, 0.0, 3.0)}
    assert spec.schema.factor("posX").unit == "width"
    assert spec.schema.factor("posY").kind == "categorical"
    factors = solve(spec, sample_noise(spec, 300, 0))
    means = [factors[factors[:, 0] == k, 1].mean() for k in range(3)]
    assert means[0] < 0.6 < means[1] < 0.9 < means[2]  # the square small, the heart large
    assert set(np.unique(factors[:, 4])) <= set(range(32))


def test_the_categorical_api_refuses_a_continuous_spec() -> None:
    with pytest.raises(CausalSpritesError, match="scale has a continuous mechanism: expected a"):
        load_spec(CHAIN)


def test_the_mechanism_inverts_exactly() -> None:
    """U -> value -> U, with a continuous and a categorical parent."""
    spec = parse_any(
        {**MIXED, "edges": [["shape", "posX"], ["scale", "posX"]], "mechanisms": {
            "scale": {"range": [0.5, 1.0], "sigmoid": {}},
            "posX": {"range": [0.1, 0.9], "sigmoid": {
                "intercept": 1, "weights": {"scale": -3, "shape": [0, 2, -1]}, "noise_scale": 2,
            }},
        }}
    )  # fmt: skip
    assert isinstance(spec, ContinuousSpec)
    rng = np.random.default_rng(0)
    parents = {"shape": rng.integers(0, 3, 500).astype(float), "scale": rng.uniform(0.5, 1, 500)}
    sigmoid = spec.sigmoids["posX"]
    location = sigmoid.location(parents, spec.schema)
    expected = (
        1 - 3 * (parents["scale"] - 0.5) / 0.5 + np.array([0, 2, -1])[parents["shape"].astype(int)]
    )
    np.testing.assert_allclose(location, expected, rtol=0, atol=1e-12)
    noise = rng.normal(size=500)
    value = sigmoid.value(location, noise)
    np.testing.assert_allclose(value, 0.1 + 0.8 * expit(expected + 2 * noise), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sigmoid.noise(location, value), noise, rtol=0, atol=1e-9)


def test_the_file_holds_images_factors_noise_and_spec(sampled: Path, chain: ContinuousSpec) -> None:
    data = load_dataset(sampled)
    assert len(data) == 2000 and data.schema.factors == chain.schema.factors
    assert data.schema.extra[SPEC_KEY] == json.loads(json.dumps(chain.to_dict() | {
        "num_samples": 2000
    }))  # fmt: skip
    noise = {n: data.extra[f"noise_{n}"] for n in NAMES}
    assert noise["scale"].shape == (2000,) and noise["orientation"].shape == (2000, 40)
    factors = data.factors(slice(None))
    np.testing.assert_array_equal(factors, solve(chain, noise))
    for name in chain.schema.continuous:  # the recorded U is the factors' own, by inversion
        sigmoid = chain.sigmoids[name]
        columns = {n: factors[:, i] for i, n in enumerate(NAMES)}
        location = sigmoid.location(columns, chain.schema)
        recovered = sigmoid.noise(location, columns[name])
        np.testing.assert_allclose(recovered, noise[name], rtol=0, atol=1e-9)
    rows = np.arange(0, 2000, 97)
    shape, scale, orientation, pos_x, pos_y = factors[rows].T
    drawn = render_values(
        shape.astype(int), scale, VALUES["orientation"][orientation.astype(int)], pos_x, pos_y
    )
    np.testing.assert_array_equal(data.images(rows), drawn)
    spread = np.percentile(factors[:, [3, 4]], [5, 95], axis=0)
    assert (spread[0] < 0.1).all() and (spread[1] > 0.9).all()  # the children span their range


def test_the_same_seed_gives_the_same_file(chain: ContinuousSpec, tmp_path: Path) -> None:
    small = replace(chain, num_samples=50)
    paths = [sample_continuous(small, tmp_path / f"{k}.npz") for k in range(2)]
    other = sample_continuous(replace(small, seed=1), tmp_path / "other.npz")
    with np.load(paths[0]) as a, np.load(paths[1]) as b, np.load(other) as c:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["factors"], c["factors"])


def test_do_of_the_observed_values_returns_the_rows(sampled: Path) -> None:
    data = load_dataset(sampled)
    truth = ContinuousTruth.of(data)
    rows = np.arange(5, 400, 13)
    factual = data.factors(rows)
    for name in ("scale", "posX", "shape"):
        factors, images = truth.counterfactual(rows, {name: factual[:, NAMES.index(name)]})
        assert np.array_equal(factors, factual)
        assert np.array_equal(images, data.images(rows))


def test_do_scale_moves_its_descendants_by_the_formula(sampled: Path) -> None:
    data = load_dataset(sampled)
    truth = ContinuousTruth.of(data)
    assert truth.edges == (("scale", "posX"), ("posX", "posY"))
    rows = np.arange(20)
    factual = data.factors(rows)
    factors, images = truth.counterfactual(rows, {"scale": 0.95})
    u_x, u_y = data.extra["noise_posX"][rows], data.extra["noise_posY"][rows]
    pos_x = expit(-2.5 + 5 * (0.95 - 0.5) / 0.5 + 1.0 * u_x)
    pos_y = expit(2.5 - 5 * pos_x + 1.0 * u_y)
    np.testing.assert_allclose(factors[:, 3], pos_x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(factors[:, 4], pos_y, rtol=0, atol=1e-12)
    assert (factors[:, 1] == 0.95).all()
    np.testing.assert_array_equal(factors[:, [0, 2]], factual[:, [0, 2]])
    np.testing.assert_array_equal(images, render_factors(data.schema, factors))
    assert (factors[:, 3] > factual[:, 3]).sum() >= 15  # larger sprites sit further right
    moved, _ = truth.counterfactual(rows, {"posX": np.linspace(0, 1, 20)})
    np.testing.assert_array_equal(moved[:, :3], factual[:, :3])  # posX's parent is kept
    with pytest.raises(CausalSpritesError, match=r"do\(posX=1.5\) is outside its range 0..1"):
        truth.counterfactual(rows, {"posX": 1.5})
    with pytest.raises(CausalSpritesError, match=r"do\(shape=3\) is not a class of shape"):
        truth.counterfactual(rows, {"shape": 3})


def test_interventional_draws_cut_the_intervened_factor_from_its_parents(
    sampled: Path,
) -> None:
    truth = ContinuousTruth.of(load_dataset(sampled))
    free = truth.interventional({}, 1000, seed=3)
    cut = truth.interventional({"posX": 0.9}, 1000, seed=3)
    assert (cut[:, 3] == 0.9).all()
    np.testing.assert_array_equal(cut[:, :3], free[:, :3])  # the same noise: ancestors kept
    u_y = sample_noise(truth.spec, 1000, 3)["posY"]
    np.testing.assert_allclose(cut[:, 4], expit(2.5 - 5 * 0.9 + u_y), rtol=0, atol=1e-12)
    assert abs(np.corrcoef(free[:, 1], free[:, 3])[0, 1]) > 0.5
    assert abs(np.corrcoef(cut[:, 1], cut[:, 4])[0, 1]) < 0.1


def test_discovery_from_labels_finds_the_chain(sampled: Path) -> None:
    stdout, _ = run("discover", "--data", sampled, "--truth", CHAIN, "--json")
    result = json.loads(stdout)
    assert result["shd"] == 0 and result["num_samples"] == 2000
    assert {(e["from"], e["to"]) for e in result["edges"]} == {("scale", "posX"), ("posX", "posY")}


def test_a_run_trained_on_it_answers_a_counterfactual_in_values(
    sampled: Path, tmp_path: Path
) -> None:
    run(
        "train", "--out", tmp_path / "run", "--data", sampled, "--steps", 10,
        "--batch-size", 32, "--device", "cpu", "--graph-from", CHAIN, "--no-progress",
    )  # fmt: skip
    stdout, _ = run("counterfactual", tmp_path / "run", "--index", 3, "--do", "scale=0.9", "--json")
    query = json.loads(stdout)["queries"][0]
    observed = dict(zip(NAMES, load_dataset(sampled).factors(3), strict=True))
    assert query["do"] == {"scale": 0.9} and query["labels"] == "given"
    assert query["factual"] == pytest.approx(observed, abs=1e-6)
    assert query["counterfactual"]["scale"] == pytest.approx(0.9, abs=1e-6)
    for name in ("shape", "orientation"):
        assert query["counterfactual"][name] == observed[name]
    assert 0.0 <= query["counterfactual"]["posX"] <= 1.0


BAD_SPECS = {
    "an unknown parent": (
        "edges: [[scale, posX]]\nmechanisms:\n"
        "  posX: {range: [0, 1], sigmoid: {weights: {size: 2}}}\n",
        "unknown parent 'size' in the weights of posX; factors are shape, scale, orientation, "
        "posX, posY",
    ),
    "no range": (
        "mechanisms:\n  posX: {sigmoid: {noise_scale: 1}}\n",
        "continuous factor posX needs a range: [low, high]",
    ),
    "a range the renderer does not draw": (
        "mechanisms:\n  posX: {range: [0, 2], sigmoid: {}}\n",
        "range of posX [0, 2] is outside what the renderer draws: posX within [0, 1]",
    ),
    "a noise_scale of 0": (
        "mechanisms:\n  scale: {range: [0.5, 1], sigmoid: {noise_scale: 0}}\n",
        "noise_scale of scale must be a number > 0, got 0",
    ),
    "a weight list of the wrong length": (
        "edges: [[shape, scale]]\nmechanisms:\n"
        "  scale: {range: [0.5, 1], sigmoid: {weights: {shape: [1, 2]}}}\n",
        "weights of shape in scale must be a list of 3 numbers, one per class (square, ellipse, "
        "heart), got [1, 2]",
    ),
    "a cycle": (
        "edges: [[posX, posY], [posY, posX]]\nmechanisms:\n"
        "  posX: {range: [0, 1], sigmoid: {weights: {posY: 1}}}\n"
        "  posY: {range: [0, 1], sigmoid: {weights: {posX: 1}}}\n",
        "the edges have a cycle through posX, posY",
    ),
    "a categorical factor with a continuous parent": (
        "edges: [[scale, orientation]]\nmechanisms:\n"
        "  scale: {range: [0.5, 1], sigmoid: {}}\n"
        "  orientation: {shift: {strength: 1}}\n",
        "categorical factor orientation has the continuous parent scale: a categorical factor's "
        "parents must be categorical",
    ),
    "a continuous shape": (
        "mechanisms:\n  shape: {range: [0, 2], sigmoid: {}}\n",
        "shape cannot be continuous: the renderer draws scale, orientation, posX, posY at any "
        "value, shape as one of its classes",
    ),
    "weights that miss an edge": (
        "edges: [[shape, scale]]\nmechanisms:\n  scale: {range: [0.5, 1], sigmoid: {}}\n",
        "weights of scale name [] but the edges into it are [shape]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_fail_in_one_line_and_write_nothing(case: str, tmp_path: Path) -> None:
    text, message = BAD_SPECS[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text("num_samples: 10\n" + text)
    yaml.safe_load(spec.read_text())  # the spec is valid YAML: the mechanism is what is wrong
    out = tmp_path / "variant.npz"
    _, error = run("data", "variant", spec, "--out", out, code=1)
    assert error == f"error: {spec}: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_the_pose_decoder_draws_continuous_values_as_the_grid_classes(
    chain: ContinuousSpec,
) -> None:
    """dSprites' pose decoder reads a continuous scale or position in the grid's unit: given the
    grid's own values it draws exactly what the classes give (in the one window a continuous
    scale uses); a value between two grid points moves the sprite between theirs."""
    config = ModelConfig(decoder_hidden=16, num_frequencies=2, scale_windows=False)
    by_class = ConditionalVAE(config, (), SCHEMA).decoder
    by_value = ConditionalVAE(config, chain.edges, chain.schema).decoder
    assert isinstance(by_class, PoseDecoder) and isinstance(by_value, PoseDecoder)
    grids = ("scales", "positions")  # the continuous factors' grids are not kept
    weights = {k: v for k, v in by_class.state_dict().items() if k not in grids}
    assert not by_value.load_state_dict(weights, strict=False).unexpected_keys
    classes = torch.tensor([[0, 0, 3, 0, 31], [2, 5, 17, 16, 0], [1, 2, 39, 31, 9]])
    grid = {f.name: torch.tensor(f.values) for f in SCHEMA.factors if f.values}
    values = classes.double()
    values[:, 1] = grid["scale"][classes[:, 1]]
    values[:, 3:5] = grid["posX"][classes[:, 3:5]]
    z = torch.randn(3, config.z_dim)
    with torch.no_grad():
        assert torch.allclose(by_value(values, z), by_class(classes, z), atol=1e-5)
        between = values.clone()
        between[:, 3] = (grid["posX"][classes[:, 3]] + grid["posX"][(classes[:, 3] + 1) % 32]) / 2
        assert not torch.allclose(by_value(between, z), by_class(classes, z), atol=1e-3)


def test_a_pose_model_of_the_chain_reads_values_and_answers(sampled: Path, tmp_path: Path) -> None:
    """The dSprites preset (pose decoder) trains on the continuous chain; its general encoder
    gives each continuous factor a location and spread; a counterfactual recomputes posX."""
    run(
        "train", "--preset", "default", "--out", tmp_path / "run", "--data", sampled,
        "--steps", 5, "--batch-size", 16, "--device", "cpu", "--graph-from", CHAIN,
        "--no-progress",
    )  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["decoder"] == "pose"
    stdout, _ = run("counterfactual", tmp_path / "run", "--index", 3, "--do", "scale=0.9", "--json")
    query = json.loads(stdout)["queries"][0]
    assert query["counterfactual"]["scale"] == pytest.approx(0.9, abs=1e-6)
    assert query["counterfactual"]["posX"] != pytest.approx(query["factual"]["posX"], abs=1e-4)


def test_train_picks_the_preset_that_fits_the_data(chain: ContinuousSpec) -> None:
    """Without --preset: dSprites and its categorical variants the pose decoder at batch 256,
    its continuous variants the pose decoder at batch 64, any other data the conv decoder."""
    assert default_preset(SCHEMA) == "default"
    assert default_preset(chain.schema) == "continuous-sprites"
    assert default_preset(pendulum.SCHEMA) == "images"
    pose = PRESETS["continuous-sprites"]
    assert pose.train.batch_size == 64 and pose.model == PRESETS["default"].model
    assert replace(pose.train, batch_size=256) == PRESETS["default"].train


def test_the_readout_proposes_a_symmetric_sprites_look_alike_turns(chain: ContinuousSpec) -> None:
    """A continuous variant keeps dSprites' knowledge of which turns draw alike, on its
    categorical columns (shape, orientation): the posterior search proposes them, and a square
    read a quarter turn off matches modulo symmetry while the continuous columns are untouched.
    Without it a square's posterior sat on one turn and discovery from pixels found a
    shape - orientation edge on the chain (bench/continuous_chain.py)."""
    space = SearchSpace.of(chain.schema)
    assert set(space.equivalents((0, 0))[1]) == {0, 9, 10, 19, 20, 29, 30, 39}
    assert set(space.equivalents((2, 0))[1]) == {0, 39}  # a heart has no look-alike turn
    target = np.array([[0, 0.7, 0, 0.5, 0.5], [2, 0.7, 0, 0.5, 0.5]])
    read = np.array([[0, 0.7, 10, 0.5, 0.5], [2, 0.7, 10, 0.5, 0.5]])
    matches = factor_matches(read, target, chain.schema, symmetric=True)
    assert matches[0].all() and not matches[1, 2] and matches[1, [0, 1, 3, 4]].all()
    assert not factor_matches(read, target, chain.schema)[0, 2]
