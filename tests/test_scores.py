"""Typed evaluation results: their JSON has the contract's keys in their order (nested results as
objects, distributions only when asked for), their text one aligned line per field, formatted
by the field's type; `evaluate*` give the `score_*` results as those JSON dicts."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import numpy as np

from causal_sprites.data.factors import FACTORS, NUM_IMAGES, index_to_classes
from causal_sprites.evaluation import as_json, held_out_sample
from causal_sprites.scores import (
    CounterfactualScores,
    DistributionEntry,
    DistributionScores,
    Evaluation,
    FactorCounterfactualScores,
    QueryScores,
    Readout,
    RunScores,
)

PER_FACTOR = {name: 0.5 for name in FACTORS}
RUN = RunScores(
    test_recon=120.0,
    test_kl=3.5,
    test_nelbo=123.5,
    classifier_accuracy=PER_FACTOR,
    num_test_images=64,
    recon_iou=0.875,
    recon_pixel_error=12.25,
    z_leakage=PER_FACTOR,
    readout=Readout(
        num_images=8,
        classifier={"exact": PER_FACTOR},
        posterior={"exact": {}},
        num_stopped_on_budget=0,
        weak_readout=None,
    ),
)
FACTOR = FactorCounterfactualScores(
    **{f.name: 0.5 for f in fields(FactorCounterfactualScores)} | {"identified": True}
)
COUNTERFACTUALS = CounterfactualScores(
    ground_truth_iou=0.9,
    ground_truth_iou_ceiling=1.0,
    ground_truth_iou_identified=0.9,
    effectiveness=1.0,
    preservation=0.75,
    composition_iou_1=1.0,
    composition_iou_10=1.0,
    composition_note="exact",
    preservation_graph="model",
    counterfactual_tv=0.01,
    counterfactual_tv_floor=0.01,
    num_noise_samples=2000,
    reversibility_iou=0.95,
    reversibility_iou_ceiling=1.0,
    reversibility_iou_identified=float("nan"),
    identified_factors=["shape", "scale"],
    per_factor={"shape": FACTOR},
    num_images_per_factor=4,
)
QUERY = QueryScores(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.5)


def entry(distributions: dict[str, list[float]] | None = None) -> DistributionEntry:
    return DistributionEntry(
        "shape->scale", "child_given_parent", "shape", "scale", 2, QUERY, QUERY, 0.0, 0.1,
        distributions,
    )  # fmt: skip


DISTRIBUTIONS = DistributionScores(0.1, 0.1, 0.2, 0.2, 0.6, 500, "data", [entry()])


def test_the_json_has_the_contract_keys_in_order() -> None:
    out = Evaluation(RUN, COUNTERFACTUALS, DISTRIBUTIONS).to_json()
    assert list(out)[:9] == [
        "test_recon", "test_kl", "test_nelbo", "classifier_accuracy", "num_test_images",
        "recon_iou", "recon_pixel_error", "z_leakage", "readout",
    ]  # fmt: skip
    assert list(out)[9:12] == ["ground_truth_iou", "ground_truth_iou_ceiling",
                               "ground_truth_iou_identified"]  # fmt: skip
    assert list(out)[-3:] == ["per_factor", "num_images_per_factor", "distributions"]
    assert out["readout"] == {"num_images": 8, "classifier": {"exact": PER_FACTOR},
                              "posterior": {"exact": {}}, "num_stopped_on_budget": 0,
                              "weak_readout": None, "num_doubted": 0}  # fmt: skip
    assert out["per_factor"]["shape"]["identified"] is True
    assert list(out["per_factor"]["shape"])[-1] == "reversibility_iou_ceiling"
    assert out["distributions"]["entries"][0]["intervention"]["seconds"] == 1.5
    assert "distributions" not in out["distributions"]["entries"][0]
    assert json.loads(json.dumps(out))["identified_factors"] == ["shape", "scale"]
    assert set(Evaluation(RUN).to_json()) == set(RUN.to_json())


def test_a_readout_cut_short_prints_a_warning() -> None:
    assert not any("readout warning" in text for text in Evaluation(RUN).lines())
    stopped = replace(RUN.readout, num_stopped_on_budget=3, weak_readout="too weak: train longer")
    lines = Evaluation(replace(RUN, readout=stopped)).lines()
    assert lines[-1] == (
        "             readout warning: 3 of 8 images' factor searches stopped on the budget; "
        "too weak: train longer"
    )
    doubted = replace(RUN.readout, num_doubted=2)
    assert Evaluation(replace(RUN, readout=doubted)).lines()[-1] == (
        "             readout warning: 2 of 8 readings in doubt (the classifier reads other "
        "factors)"
    )
    both = replace(stopped, num_doubted=1)
    assert (
        Evaluation(replace(RUN, readout=both))
        .lines()[-1]
        .endswith(
            "stopped on the budget; too weak: train longer; 1 of 8 readings in doubt (the "
            "classifier reads other factors)"
        )
    )


def test_an_entry_carries_its_distributions_only_when_asked() -> None:
    shown = DistributionScores(0.1, 0.1, 0.2, 0.2, 0.6, 500, "data", [entry({"scm_do": [1.0]})])
    assert shown.to_json()["entries"][0]["distributions"] == {"scm_do": [1.0]}
    assert "distributions" not in entry().to_json()


def test_each_field_prints_by_its_type() -> None:
    lines = Evaluation(RUN, COUNTERFACTUALS, DISTRIBUTIONS).lines()
    assert lines[0] == "                  test_recon: 120.0000"
    assert "             num_test_images: 64" in lines
    assert (
        "         classifier_accuracy: shape 0.500, scale 0.500, orientation 0.500, "
        "posX 0.500, posY 0.500"
    ) in lines
    assert "                     readout: (see --json)" in lines
    assert "          identified_factors: shape, scale" in lines
    assert "reversibility_iou_identified: nan" in lines
    assert "            composition_note: exact" in lines
    assert lines[-3:] == [
        "                  per_factor: (see --json)",
        "       num_images_per_factor: 4",
        "               distributions: (see --json)",
    ]
    assert len(lines) == len(Evaluation(RUN, COUNTERFACTUALS, DISTRIBUTIONS).to_json())


def test_evaluate_gives_the_scores_as_json() -> None:
    def score(offset: float, *, extra: float = 0.0) -> CounterfactualScores:
        return replace(COUNTERFACTUALS, effectiveness=offset + extra)

    evaluate = as_json(score)
    out = evaluate(0.25, extra=0.5)
    assert out == {**COUNTERFACTUALS.to_json(), "effectiveness": 0.75}
    assert math.isnan(out["reversibility_iou_identified"])


def test_the_readout_images_are_a_random_subset_not_the_first_sorted_rows() -> None:
    rows, chosen = held_out_sample(np.arange(0, NUM_IMAGES, 20), 4096, 512, seed=0)
    assert len(rows) == 4096 and chosen.sum() == 512 and bool(np.all(np.diff(rows) > 0))
    picked = index_to_classes(rows[chosen], with_color=False)
    assert set(picked[:, 0].tolist()) == {0, 1, 2} and set(picked[:, 1].tolist()) == set(range(6))
    first = index_to_classes(rows[:512], with_color=False)  # what the readout used to read
    assert set(first[:, 0].tolist()) == {0} and first[:, 1].max() <= 2
