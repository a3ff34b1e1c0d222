"""Counterfactuals as distributions: the factor graph's Monte Carlo answer against rejection
sampling from the prior, the distribution score (a model with the true tables sits at the floor,
one with a flipped row far above), preservation against the true graph, reading variants."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from causal_sprites.config import RunConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS, SCHEMA, SIZES
from causal_sprites.data.render import render
from causal_sprites.data.variants import read_variant, sample_variant, variant_of
from causal_sprites.errors import CausalSpritesError
from causal_sprites.evaluation import evaluate_counterfactuals
from causal_sprites.metrics import counterfactual_tv, distribution_tv
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.scm.graph import FactorGraph
from causal_sprites.scm.queries import CausalModel
from causal_sprites.scm.results import CounterfactualResult
from tests.test_counterfactual_ceiling import CHAIN, NUM, PerfectModel, Seen

TRUE_GRAPH = FactorGraph.from_tables(CHAIN.parents, CHAIN.tables)
SHAPE, SCALE, POSX = (FACTORS.index(n) for n in ("shape", "scale", "posX"))


def rejection_counterfactual(factual: np.ndarray, shape: int, num: int, seed: int) -> np.ndarray:
    """Counterfactual (scale, posX) of one factual tuple under do(shape) by rejection: Gumbels
    from the prior, kept where they reproduce the factual classes, pushed through the mechanisms."""
    rng = np.random.default_rng(seed)
    scale_table, posx_table = np.log(CHAIN.tables["scale"]), np.log(CHAIN.tables["posX"])
    g_scale = rng.gumbel(size=(num, SIZES[SCALE]))
    g_posx = rng.gumbel(size=(num, SIZES[POSX]))
    keep = (np.argmax(scale_table[factual[SHAPE]] + g_scale, 1) == factual[SCALE]) & (
        np.argmax(posx_table[factual[SCALE]] + g_posx, 1) == factual[POSX]
    )
    scale = np.argmax(scale_table[shape] + g_scale[keep], 1)
    posx = np.argmax(posx_table[scale] + g_posx[keep], 1)
    return np.stack([scale, posx], 1)


def test_monte_carlo_matches_rejection_sampling_from_the_prior() -> None:
    factual = np.array([0, 1, 7, 9, 3])  # a square of scale 1 at posX 9
    reference = rejection_counterfactual(factual, shape=2, num=3_000_000, seed=0)
    assert len(reference) > 20_000
    drawn = TRUE_GRAPH.counterfactuals(
        torch.as_tensor(factual[None]), {"shape": torch.tensor([2])}, 40_000, torch.Generator()
    )[:, 0]
    assert (drawn[:, SHAPE] == 2).all() and (drawn[:, [2, 4]] == torch.tensor([7, 3])).all()
    ours = np.zeros((len(drawn), 1, 5), np.int64)
    ours[:, 0, [SCALE, POSX]] = drawn[:, [SCALE, POSX]].numpy()
    truth = np.zeros((len(reference), 1, 5), np.int64)
    truth[:, 0, [SCALE, POSX]] = reference
    assert distribution_tv(ours, truth)[0] < 0.03
    assert len(np.unique(drawn[:, SCALE])) > 2  # a real distribution, not a point


def _queries(num: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    factual = np.stack([rng.integers(0, s, num) for s in SIZES], 1)
    return factual, {"shape": (factual[:, 0] + rng.integers(1, 3, num)) % 3}


def test_true_tables_sit_at_the_floor_and_a_flipped_row_far_above() -> None:
    factual, do = _queries(64)
    tv, floor = counterfactual_tv(TRUE_GRAPH, TRUE_GRAPH, factual, do, 2000, seed=0)
    assert tv == floor and 0 < floor < 0.1
    flipped = {**CHAIN.tables, "scale": CHAIN.tables["scale"][:, ::-1]}
    wrong = FactorGraph.from_tables(CHAIN.parents, flipped)
    tv, floor = counterfactual_tv(wrong, TRUE_GRAPH, factual, do, 2000, seed=0)
    assert tv > floor + 0.3


def test_identified_counterfactuals_are_points() -> None:
    factual, _ = _queries(16)
    do = {"posX": np.full(16, 4)}  # posX has no descendants in the chain
    drawn = TRUE_GRAPH.counterfactuals(
        torch.as_tensor(factual), {"posX": torch.as_tensor(do["posX"])}, 50
    )
    assert (drawn == drawn[:1]).all()
    empty = FactorGraph.from_tables(
        {}, {n: np.ones(k) for n, k in zip(FACTORS, SIZES, strict=True)}
    )
    assert counterfactual_tv(empty, empty, factual, {"shape": factual[:, 0]}, 100, 0) == (0.0, 0.0)


class WrongGraphModel(PerfectModel):
    """A perfect model of the chain except that it believes shape -> orientation and so turns
    the sprite whenever the shape is intervened on."""

    def __init__(self, seen: Seen) -> None:
        super().__init__(CHAIN, seen)
        self.config = RunConfig(graph=(*CHAIN.edges, ("shape", "orientation")))

    def counterfactual_query(self, images: Any, factual: Any, do: Any, seed: int = 0) -> Any:
        result = super().counterfactual_query(images, factual, do, seed)
        if "shape" not in do:
            return result
        classes = result.counterfactual.copy()
        classes[:, 2] = (classes[:, 2] + 7) % 40
        return CounterfactualResult(self.seen.show(classes), result.factual, classes, False, 0.0)


@pytest.fixture(scope="module")
def chain_variant(tmp_path_factory: pytest.TempPathFactory) -> tuple[DSprites, Any]:
    path = sample_variant(CHAIN, tmp_path_factory.mktemp("chain") / "chain.npz")
    return DSprites.load(path), read_variant(path)


def test_preservation_is_judged_against_the_true_graph(chain_variant: Any) -> None:
    data, recorded = chain_variant
    seen = Seen()
    scores = evaluate_counterfactuals(WrongGraphModel(seen), data, seen, recorded, num_images=NUM)
    assert scores["preservation_graph"] == "true"
    assert scores["per_factor"]["shape"]["preservation"] < 0.85
    assert scores["per_factor"]["posY"]["preservation"] == 1.0
    assert scores["composition_note"].startswith("exact by construction")
    for factor in scores["per_factor"].values():
        assert factor["counterfactual_tv"] == factor["counterfactual_tv_floor"]  # true tables


def test_the_model_answers_with_its_own_tables(model: CausalModel) -> None:
    """The pretrained networks with the chain's graph and tables: the API's distribution over
    counterfactual tuples is the factor graph's, its pixel map the mixture of its images."""
    vae = ConditionalVAE(model.model.config, CHAIN.edges, SCHEMA)
    networks = {k: v for k, v in model.model.state_dict().items() if not k.startswith("cpt_")}
    vae.load_state_dict(networks, strict=False)
    for name in FACTORS:
        vae.cpt(name).copy_(torch.as_tensor(np.log(CHAIN.tables[name])))
    chain_model = CausalModel(vae.eval(), dataclasses.replace(model.config, graph=CHAIN.edges))
    factual = np.array([[0, 1, 7, 9, 3], [2, 5, 0, 20, 20]])
    pictures = render(np.concatenate([np.zeros((2, 1), np.int64), factual], 1))
    spread = chain_model.counterfactual_distribution(pictures, factual, {"shape": [2, 0]}, 4000)
    assert spread.method == ["monte_carlo", "monte_carlo"]
    for b in range(2):
        assert spread.probabilities[b].sum() == pytest.approx(1.0)
        assert (spread.classes[b][:, SHAPE] == [2, 0][b]).all()
        assert len(spread.classes[b]) > 2
        assert (np.diff(spread.probabilities[b]) <= 0).all()
    same_noise = torch.Generator().manual_seed(0)  # the API's default seed
    drawn = TRUE_GRAPH.counterfactuals(
        torch.as_tensor(factual), {"shape": torch.tensor([2, 0])}, 4000, same_noise
    ).numpy()
    for b in range(2):
        ours = np.repeat(spread.classes[b], np.round(spread.probabilities[b] * 4000).astype(int), 0)
        assert distribution_tv(ours[:, None], drawn[:, b : b + 1])[0] < 0.01
    assert spread.pixel_probs.min() >= 0.0 and spread.pixel_probs.max() <= 1.0
    point = chain_model.counterfactual_distribution(pictures, factual, {"posY": 5}, 100)
    assert point.method == ["exact", "exact"] and [len(c) for c in point.classes] == [1, 1]
    assert point.probabilities[0][0] == 1.0 and point.classes[0][0][4] == 5


def test_a_variant_that_cannot_be_read_is_an_error(tmp_path: Path, official_file: Any) -> None:
    assert variant_of(official_file()) is None
    assert variant_of(official_file("tiny.hdf5")) is None
    broken = tmp_path / "broken.npz"
    np.savez(broken, spec=np.array('{"name": "x"}'))
    with pytest.raises(CausalSpritesError, match="not a causal variant"):
        variant_of(broken)
