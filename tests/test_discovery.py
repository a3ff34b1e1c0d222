"""Causal discovery: no edge on dSprites, SHD 0 on the example variants, CPDAGs and SHD by hand."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from causal_sprites.data.factors import FACTORS, NUM_IMAGES, SCHEMA, index_to_classes
from causal_sprites.data.variants import load_spec, sample_classes, sample_variant
from causal_sprites.discovery import (
    cpdag_of_dag,
    discover,
    discover_file,
    discover_from_images,
    edge_list,
    pairwise_tests,
    structural_hamming_distance,
)
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import FactorPosterior

EXAMPLES = Path(__file__).parents[1] / "examples" / "variants"


def test_dsprites_has_no_edges_and_the_tests_show_why() -> None:
    labels = index_to_classes(np.arange(NUM_IMAGES))  # every factor combination exactly once
    result = discover(labels, names=FACTORS, truth=[])
    assert result["edges"] == [] and result["shd"] == 0
    assert len(result["tests"]) == 10
    for test in result["tests"]:
        assert test["p_value"] == pytest.approx(1.0) and test["cramers_v"] == pytest.approx(0.0)
    json.dumps(result)


def test_a_random_subsample_of_dsprites_has_no_edges() -> None:
    labels = index_to_classes(np.arange(NUM_IMAGES), with_color=False)
    result = discover(labels, names=FACTORS, max_samples=20_000, seed=3)
    assert result["num_samples"] == 20_000 and result["edges"] == [] and result["shd"] is None


@pytest.mark.parametrize("name", ["chain", "fork", "collider"])
def test_example_variants_are_recovered_exactly(name: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.yaml")
    labels, _ = sample_classes(spec)
    result = discover(labels, spec, names=FACTORS)
    assert result["shd"] == 0, result["edges"]
    assert result["edges"] == result["truth_edges"]
    found = {(e["from"], e["to"]) for e in result["edges"]}
    true_pairs = {frozenset(edge) for edge in spec.edges}
    assert {frozenset(pair) for pair in found} == true_pairs
    directed = [e for e in result["edges"] if e["directed"]]
    assert (name == "collider") == bool(directed)  # only the v-structure has orientations


def test_cpdags_of_small_dags() -> None:
    chain = cpdag_of_dag([("shape", "scale"), ("scale", "posX")], FACTORS)
    assert chain == {("shape", "scale"): "--", ("scale", "posX"): "--"}
    collider = cpdag_of_dag([("shape", "posY"), ("scale", "posY")], FACTORS)
    assert collider == {("shape", "posY"): "->", ("scale", "posY"): "->"}
    # Meek R1: the collider's child orients posY -> posX.
    beyond = cpdag_of_dag([("shape", "posY"), ("scale", "posY"), ("posY", "posX")], FACTORS)
    assert beyond[("posX", "posY")] == "<-"
    # A shielded collider is no v-structure: the triangle stays undirected.
    triangle = cpdag_of_dag([("shape", "scale"), ("shape", "posX"), ("scale", "posX")], FACTORS)
    assert set(triangle.values()) == {"--"}
    assert edge_list(beyond, FACTORS)[-1] == {"from": "posY", "to": "posX", "directed": True}


def test_structural_hamming_distance_counts_each_wrong_pair_once() -> None:
    truth = cpdag_of_dag([("shape", "posY"), ("scale", "posY")], FACTORS)
    assert structural_hamming_distance(truth, truth) == 0
    assert structural_hamming_distance({}, truth) == 2  # two missing edges
    assert structural_hamming_distance({**truth, ("shape", "scale"): "--"}, truth) == 1
    assert structural_hamming_distance({**truth, ("shape", "posY"): "<-"}, truth) == 1
    assert structural_hamming_distance({**truth, ("shape", "posY"): "--"}, truth) == 1


def test_pairwise_tests_see_a_dependence() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (5000, 5))
    labels[:, 3] = labels[:, 1]  # posX copies scale: Cramer's V 1
    by_pair = {(t["a"], t["b"]): t for t in pairwise_tests(labels, FACTORS)}
    assert by_pair[("scale", "posX")]["cramers_v"] == pytest.approx(1.0)
    assert by_pair[("scale", "posX")]["p_value"] < 1e-100
    assert by_pair[("shape", "posY")]["cramers_v"] < 0.05


def test_discovery_from_a_file_and_from_inferred_labels(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "collider.yaml")
    small = dataclasses.replace(spec, num_samples=20_000)
    path = sample_variant(small, tmp_path / "collider.npz")
    from_file = discover_file(path, truth=spec)
    assert from_file["shd"] == 0 and from_file["num_samples"] == 20_000

    class Reader:
        """A stand-in for a run's posterior p(y | x): a perfect, certain one."""

        schema = SCHEMA

        def infer(self, x: np.ndarray, top: int = 5) -> FactorPosterior:
            certain = labels[: len(x), None]
            return FactorPosterior(
                certain,
                np.ones((len(x), 1)),
                np.zeros(len(x)),
                np.ones(len(x)),
                np.ones(len(x), bool),
            )

    labels, _ = sample_classes(small)
    images = np.zeros((len(labels), 64, 64), np.uint8)
    from_images = discover_from_images(Reader(), images, spec)
    assert from_images["shd"] == 0 and from_images["factors"] == list(FACTORS)
    assert from_images["labels"] == "posterior" and len(from_images["tests"]) == 10
    assert from_file["labels"] == "given"


def test_a_subset_of_factors() -> None:
    labels, _ = sample_classes(load_spec(EXAMPLES / "chain.yaml"))
    result = discover(labels, [("shape", "scale")], names=FACTORS, factors=["scale", "shape"])
    assert result["factors"] == ["shape", "scale"] and result["shd"] == 0
    assert result["edges"] == [{"from": "shape", "to": "scale", "directed": False}]
    with pytest.raises(CausalSpritesError, match="edge scale -> posX outside the factors"):
        discover(labels, [("scale", "posX")], names=FACTORS, factors=["shape", "scale"])
    with pytest.raises(CausalSpritesError, match="at least two"):
        discover(labels, names=FACTORS, factors=["shape", "colour"])


def test_bad_input_fails_cleanly() -> None:
    with pytest.raises(CausalSpritesError, match="labels must have shape"):
        discover(np.zeros((100, 3), np.int64), names=FACTORS)
    with pytest.raises(CausalSpritesError, match="at least 50 rows"):
        discover(np.zeros((10, 5), np.int64), names=FACTORS)
    with pytest.raises(CausalSpritesError, match="unknown test"):
        discover(np.zeros((100, 5), np.int64), names=FACTORS, test="fisherz")  # type: ignore[arg-type]
    with pytest.raises(CausalSpritesError, match="alpha"):
        discover(np.zeros((100, 5), np.int64), names=FACTORS, alpha=0.0)


def test_truth_graphs_are_checked() -> None:
    with pytest.raises(CausalSpritesError, match="unknown factor in edge"):
        cpdag_of_dag([("shape", "colour")], FACTORS)
    with pytest.raises(CausalSpritesError, match="cycle"):
        cpdag_of_dag([("shape", "scale"), ("scale", "shape")], FACTORS)
