"""Distribution metrics: the model's P(target | do(set = v)) and P(target | set = v) against the
truth, from the SCM and through an oracle. Small VAEs whose tables are set by hand, so the truth is
known: a model with the true tables scores (near) zero, one without the edges gets conditioning
wrong and intervening on an effect right, and do and conditioning differ exactly where the truth
says they should (an effect's cause, two effects of a fork)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from causal_sprites.config import ModelConfig, RunConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS, SCHEMA, SIZES
from causal_sprites.data.render import render
from causal_sprites.data.variants import VariantSpec, distribution, parse_spec
from causal_sprites.errors import CausalSpritesError
from causal_sprites.evaluation import evaluate_distributions
from causal_sprites.metrics import (
    empirical_conditional,
    label_distribution,
    sampling_floor,
    total_variation,
)
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.scm.graph import parents_from_edges
from causal_sprites.scm.queries import CausalModel
from causal_sprites.scm.results import SampleResult

SMALL = ModelConfig(decoder_hidden=16, num_frequencies=2, encoder_channels=4, encoder_hidden=16)
SCALE_GIVEN_SHAPE = [[8, 6, 3, 1, 1, 1], [1, 3, 6, 6, 3, 1], [1, 1, 1, 3, 6, 8]]
CHAIN = parse_spec(
    {
        "name": "chain",
        "num_samples": 100,
        "edges": [["shape", "scale"], ["scale", "posX"]],
        "mechanisms": {
            "scale": {"table": SCALE_GIVEN_SHAPE},
            "posX": {"shift": {"strength": 2}},
        },
    }
)
FORK = parse_spec(
    {
        "name": "fork",
        "num_samples": 100,
        "edges": [["shape", "scale"], ["shape", "posX"]],
        "mechanisms": {
            "scale": {"table": SCALE_GIVEN_SHAPE},
            "posX": {"shift": {"strength": 2}},
        },
    }
)
NUM = 1000


class Rendered:
    """A CausalModel whose query images are the dataset images of the classes it drew (a perfect
    image model), so the oracle path isolates sampling noise; `seen` remembers each image."""

    def __init__(self, model: CausalModel) -> None:
        self.model = model
        self.schema = model.schema
        self.seen: dict[bytes, np.ndarray] = {}

    def _render(self, result: SampleResult) -> SampleResult:
        images = render(result.classes)
        self.seen.update(
            (image.tobytes(), c) for image, c in zip(images, result.classes, strict=True)
        )
        return SampleResult(images, result.classes, result.marginals, result.seconds)

    def intervene_query(self, do: Any, num_samples: int, seed: int | None = None) -> SampleResult:
        return self._render(self.model.intervene_query(do, num_samples, seed=seed))

    def condition_query(
        self, evidence: Any, num_samples: int, seed: int | None = None
    ) -> SampleResult:
        return self._render(self.model.condition_query(evidence, num_samples, seed=seed))


class LookupOracle:
    """A perfect oracle for `Rendered` images: the classes each image was drawn from."""

    def __init__(self, rendered: Rendered) -> None:
        self.rendered = rendered

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.rendered.seen[image.tobytes()] for image in images])


class ZeroOracle:
    """A useless oracle: class 0 for every factor of every image."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((len(images), len(FACTORS)), dtype=np.int64)


def _model(graph: tuple[tuple[str, str], ...], tables: dict[str, np.ndarray]) -> CausalModel:
    """An untrained small VAE over `graph` with the given tables (*parent sizes, K), uniform for
    factors not given."""
    torch.manual_seed(0)
    vae = ConditionalVAE(SMALL, graph, SCHEMA).eval()
    for name, table in tables.items():
        vae.cpt(name).copy_(torch.as_tensor(np.log(table), dtype=torch.float32))
    return CausalModel(vae, RunConfig(model=SMALL, graph=graph))


def _true_model(spec: VariantSpec) -> CausalModel:
    """The spec's own tables in a model over its graph."""
    for name in FACTORS:
        assert list(spec.parents[name]) == list(
            parents_from_edges(spec.edges, SCHEMA.names)[name]
        )  # same table layout
    return _model(spec.edges, spec.tables)


@pytest.fixture(scope="module")
def chain_scores() -> dict[str, Any]:
    rendered = Rendered(_true_model(CHAIN))
    return evaluate_distributions(rendered, LookupOracle(rendered), CHAIN, None, NUM)


def test_true_tables_score_zero_from_the_scm(chain_scores: dict[str, Any]) -> None:
    assert chain_scores["truth"] == "variant"
    assert chain_scores["num_samples"] == NUM
    assert chain_scores["tv_intervention"] < 1e-5
    assert chain_scores["tv_condition"] < 1e-5
    queries = {(e["set"], e["target"], e["direction"]) for e in chain_scores["entries"]}
    assert queries == {
        ("shape", "scale", "child_given_parent"),
        ("scale", "posX", "child_given_parent"),
        ("scale", "shape", "parent_given_child"),
        ("posX", "scale", "parent_given_child"),
    }


def test_a_perfect_image_model_is_off_by_sampling_noise_only(chain_scores: dict[str, Any]) -> None:
    ratios = []
    for entry in chain_scores["entries"]:
        for mode in ("intervention", "condition"):
            scores = entry[mode]
            assert scores["oracle_agreement"] == 1.0
            assert scores["tv_oracle_vs_drawn"] == 0.0
            assert scores["tv_oracle"] == pytest.approx(scores["tv_drawn"])
            assert scores["tv_oracle"] < 3.5 * scores["sampling_floor"]
            ratios.append(scores["tv_oracle"] / scores["sampling_floor"])
    assert 0.5 < np.mean(ratios) < 1.6  # the floor is what a perfect model scores, on average
    floors = [e[m]["sampling_floor"] for e in chain_scores["entries"] for m in ("intervention",)]
    assert chain_scores["sampling_floor"] >= max(floors)


def test_do_and_conditioning_differ_on_a_cause_not_on_an_effect(
    chain_scores: dict[str, Any],
) -> None:
    """In the chain shape -> scale -> posX, P(scale | do(shape)) = P(scale | shape), but
    P(shape | do(scale)) = P(shape), not P(shape | scale); the SCM reproduces each gap."""
    for entry in chain_scores["entries"]:
        gap = entry["truth_tv_do_vs_condition"]
        if entry["direction"] == "child_given_parent":
            assert gap == pytest.approx(0.0, abs=1e-12)
        else:
            assert gap > 0.2
        assert entry["scm_tv_do_vs_condition"] == pytest.approx(gap, abs=1e-5)
    first = chain_scores["entries"][2]
    assert (first["set"], first["target"]) == ("scale", "shape")
    assert first["value"] == SIZES[FACTORS.index("scale")] - 1  # default: the last class
    expected = total_variation(
        distribution(CHAIN, "shape"), distribution(CHAIN, "shape", given={"scale": 5})
    )
    assert first["truth_tv_do_vs_condition"] == pytest.approx(expected)


def test_fork_effects_are_dependent_but_not_causally() -> None:
    """In the fork scale <- shape -> posX, the scale tells about posX, setting it does not."""
    rendered = Rendered(_true_model(FORK))
    scores = evaluate_distributions(
        rendered,
        LookupOracle(rendered),
        FORK,
        None,
        NUM,
        pairs=[("scale", "posX")],
        values={"scale": 0},
        return_distributions=True,
    )
    (entry,) = scores["entries"]
    assert (entry["edge"], entry["direction"], entry["value"]) == (None, None, 0)
    assert entry["truth_tv_do_vs_condition"] > 0.2
    assert scores["tv_intervention"] < 1e-5 and scores["tv_condition"] < 1e-5
    found = entry["distributions"]
    np.testing.assert_allclose(found["truth_do"], distribution(FORK, "posX"), atol=1e-12)
    np.testing.assert_allclose(found["scm_condition"], found["truth_condition"], atol=1e-5)
    assert found["oracle_do"] != found["oracle_condition"]


def test_a_model_without_edges_gets_only_interventions_on_effects_right() -> None:
    """Independent factors with the true marginals: P(cause | do(effect)) is the cause's marginal,
    right; conditioning, and intervening on a cause, are wrong."""
    marginals = {name: distribution(CHAIN, name) for name in FACTORS}
    rendered = Rendered(_model((), marginals))
    scores = evaluate_distributions(rendered, LookupOracle(rendered), CHAIN, None, 500)
    for entry in scores["entries"]:
        assert entry["scm_tv_do_vs_condition"] < 1e-6  # no edges: nothing to tell them apart
        done, seen = entry["intervention"]["tv_scm"], entry["condition"]["tv_scm"]
        assert seen > 0.2
        assert done < 1e-5 if entry["direction"] == "parent_given_child" else done > 0.2
    assert scores["tv_condition"] > 0.2 and scores["tv_intervention"] > 0.2


def test_a_useless_oracle_is_caught_by_the_image_path() -> None:
    rendered = Rendered(_true_model(CHAIN))
    scores = evaluate_distributions(rendered, ZeroOracle(), CHAIN, None, 500)
    assert scores["tv_intervention"] < 1e-5  # the SCM's answer does not involve images
    assert scores["tv_intervention_oracle"] > 0.5 and scores["tv_condition_oracle"] > 0.5
    for entry in scores["entries"]:
        assert entry["intervention"]["tv_oracle_vs_drawn"] > 0.5


def _grid(scales: list[int]) -> DSprites:
    """A dSprites subset: every shape, the given scales, 2 orientations, 2 posX, 2 posY."""
    grids = np.meshgrid([0], [0, 1, 2], scales, [0, 9], [3, 20], [7, 30])
    classes = np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)
    return DSprites.from_arrays(render(classes), classes)


def test_on_dsprites_the_truth_is_the_data() -> None:
    """No variant: the example pair shape -> scale against the data's own distribution. A
    uniform model is perfect on a full grid and 1/2 off where the data has half the scales."""
    rendered = Rendered(_model((), {}))
    oracle = LookupOracle(rendered)
    full = evaluate_distributions(rendered, oracle, None, _grid(list(range(6))), 300)
    assert full["truth"] == "data"
    assert {e["edge"] for e in full["entries"]} == {"shape->scale"}
    assert full["tv_intervention"] < 1e-5 and full["tv_condition"] < 1e-5
    values = {"scale": 2}  # the last scale in this data
    half = evaluate_distributions(rendered, oracle, None, _grid([0, 1, 2]), 300, values=values)
    child = next(e for e in half["entries"] if e["target"] == "scale")
    assert child["condition"]["tv_scm"] == pytest.approx(0.5, abs=1e-5)
    assert child["intervention"]["tv_scm"] == pytest.approx(0.5, abs=1e-5)
    assert half["tv_condition"] == pytest.approx(0.5, abs=1e-5)
    parent = next(e for e in half["entries"] if e["target"] == "shape")
    assert parent["value"] == 2 and parent["set"] == "scale"
    without = evaluate_distributions(rendered, oracle, None, None, 300)
    assert without["truth"] == "uniform" and without["tv_condition"] < 1e-5


def test_empirical_conditional_perfect_useless_duplicated() -> None:
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, size, 5000) for size in SIZES], -1)
    labels[:, 1] = np.minimum(labels[:, 0] * 2 + rng.integers(0, 2, 5000), 5)  # scale from shape
    given = empirical_conditional(labels, "scale", {"shape": 1}, sizes=SCHEMA.size_of)
    np.testing.assert_allclose(given, label_distribution(labels[labels[:, 0] == 1, 1], 6))
    assert set(np.flatnonzero(given)) == {2, 3}
    np.testing.assert_allclose(
        empirical_conditional(np.tile(labels, (2, 1)), "scale", sizes=SCHEMA.size_of),
        empirical_conditional(labels, "scale", sizes=SCHEMA.size_of),
    )
    with_color = np.concatenate([np.zeros((5000, 1), np.int64), labels], 1)
    np.testing.assert_allclose(
        empirical_conditional(with_color, "scale", {"shape": 1}, sizes=SCHEMA.size_of), given
    )
    with pytest.raises(CausalSpritesError, match="no rows"):
        empirical_conditional(
            labels[labels[:, 0] != 2], "scale", {"shape": 2}, sizes=SCHEMA.size_of
        )


def test_sampling_floor_shrinks_as_one_over_root_n() -> None:
    uniform = np.full(32, 1 / 32)
    small, large = sampling_floor(uniform, 1000), sampling_floor(uniform, 16000)
    assert small / large == pytest.approx(4.0, rel=0.15)
    assert sampling_floor(np.eye(6)[2], 10) == 0.0  # a point mass is drawn exactly
    assert sampling_floor(uniform, 1000) == sampling_floor(uniform, 1000)  # seeded
