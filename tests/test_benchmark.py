"""`causal-sprites benchmark`: the bracket (the truth scores perfect, identity and resample score
as they must, the pretrained model sits near the truth), the query set's hash, a user's model
scored through the CLI, a failing model reported as failed, truths of a variant and the pendulum,
and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from causal_sprites.benchmark import frechet_distance, rank_correlations, run_benchmark
from causal_sprites.benchmark_contenders import Contender, load_contenders, load_factory
from causal_sprites.benchmark_queries import draw_queries
from causal_sprites.benchmark_truth import Known, VariantTruth, known_data
from causal_sprites.data import pendulum
from causal_sprites.data.continuous_spec import ContinuousSpec
from causal_sprites.data.continuous_variants import ContinuousTruth, sample_continuous
from causal_sprites.data.variant_spec import load_any, parse_any
from causal_sprites.data.variants import (
    abduct_noise,
    parse_spec,
    sample_variant,
    true_counterfactual,
)
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.mechanisms import sample_gumbels
from tests.cli_run import run

NUM_QUERIES = 32
#: A few steps of the data's own oracle (the benchmark's default trains 3,000).
ORACLE_STEPS = 20
CHAIN = parse_spec(
    {
        "name": "chain",
        "num_samples": 400,
        "seed": 3,
        "edges": [["shape", "scale"], ["scale", "posX"]],
        "mechanisms": {
            "scale": {"table": [[8, 6, 3, 1, 1, 1], [1, 3, 6, 6, 3, 1], [1, 1, 1, 3, 6, 8]]},
            "posX": {"shift": {"strength": 2}},
        },
    }
)


@pytest.fixture(scope="module")
def dsprites() -> Known:
    return known_data("dsprites")


@pytest.fixture(scope="module")
def bracket(dsprites: Known) -> dict[str, Any]:
    """oracle, identity, resample and the pretrained model on the same dSprites queries."""
    names = ["oracle", "identity", "resample", "pretrained"]
    contenders = load_contenders(names, dsprites.schema, dsprites.truth, torch.device("cpu"))
    queries = draw_queries(dsprites.data, NUM_QUERIES, seed=0)
    result, _ = run_benchmark(dsprites, contenders, queries, seed=0)
    return {m["name"]: m for m in result["models"]} | {"result": result}


def test_oracle_scores_perfect(bracket: dict[str, Any]) -> None:
    oracle = bracket["oracle"]["metrics"]
    assert bracket["result"]["identified_fraction"] == 1.0  # dSprites: always identified
    assert oracle["truth_iou"] == 1.0 and oracle["truth_iou_identified"] == 1.0
    assert oracle["composition_1"] == oracle["composition_10"] == oracle["reversibility"] == 1.0
    # Effectiveness of the truth is the reader's own accuracy (one class of tolerance).
    assert oracle["effectiveness"] == bracket["result"]["reader_ceiling"] >= 0.97
    assert oracle["preservation"] >= 0.97


def test_identity_composes_perfectly_and_changes_nothing(bracket: dict[str, Any]) -> None:
    identity = bracket["identity"]["metrics"]
    assert identity["composition_1"] == identity["composition_10"] == 1.0
    assert identity["reversibility"] == 1.0 and identity["preservation"] >= 0.97
    assert identity["effectiveness"] < 0.25
    assert identity["truth_iou"] < 0.6


def test_resample_is_worse_than_abduction(bracket: dict[str, Any]) -> None:
    ours, resample = bracket["pretrained"]["metrics"], bracket["resample"]["metrics"]
    assert ours["truth_iou"] > 0.99  # within 0.01 of the oracle on identified queries
    assert resample["truth_iou"] < 0.5 < ours["truth_iou"]
    assert resample["effectiveness"] > 0.9  # it does what was asked, on another sprite
    assert resample["preservation"] < 0.5 and resample["composition_1"] < 0.5
    assert bracket["pretrained"]["seconds_per_1000"] > 0


def test_proxy_rank_correlation(bracket: dict[str, Any]) -> None:
    rho = bracket["result"]["proxy_rank_correlation"]
    assert set(rho) == {
        "effectiveness",
        "preservation",
        "composition_1",
        "composition_10",
        "reversibility",
        "realism_fd",
    }
    assert all(r is None or -1.0 <= r <= 1.0 for r in rho.values())
    models = [
        {"status": "ok", "metrics": {"truth_iou": t, "effectiveness": e}}
        for t, e in ((0.1, 0.2), (0.5, 0.6), (0.9, 0.7))
    ]
    assert rank_correlations(models, "truth_iou")["effectiveness"] == pytest.approx(1.0)
    assert rank_correlations(models[:2], "truth_iou")["effectiveness"] is None


def test_realism_fd(bracket: dict[str, Any]) -> None:
    fd = {name: bracket[name]["metrics"]["realism_fd"] for name in ("oracle", "pretrained")}
    assert fd["oracle"] == 0.0 and fd["pretrained"] < 0.05
    assert bracket["identity"]["metrics"]["realism_fd"] > 1.0
    points = np.random.default_rng(0).normal(size=(4000, 3))
    assert frechet_distance(points, points) == pytest.approx(0.0, abs=1e-9)
    shifted = frechet_distance(points, points + np.array([3.0, 0.0, 4.0]))
    assert shifted == pytest.approx(25.0, rel=1e-6)


def test_query_hash_is_stable_and_seeded(dsprites: Known) -> None:
    schema = dsprites.schema
    first = draw_queries(dsprites.data, 40, seed=0)
    assert first.sha256(schema) == draw_queries(dsprites.data, 40, seed=0).sha256(schema)
    assert first.sha256(schema) != draw_queries(dsprites.data, 40, seed=1).sha256(schema)
    records = first.records(schema)
    # Single do() on every factor, then joint do() of pairs; never a do() to the factual value.
    assert [list(r["do"]) for r in records[:3]] == [["shape"]] * 3
    assert any(len(r["do"]) == 2 for r in records)
    for record in records:
        factual = dsprites.data.factors([record["row"]])[0]
        for name, value in record["do"].items():
            assert value != factual[schema.index(name)]


def test_variant_truth_and_identification(tmp_path: Path) -> None:
    path = sample_variant(CHAIN, tmp_path / "chain.npz")
    known = known_data(str(path))
    assert isinstance(known.truth, VariantTruth)
    assert known.descendants(["shape"]) == {"scale", "posX"}
    assert not known.identified(["shape"]) and known.identified(["posY"])
    rows = np.array([3, 7, 11])
    do = {"shape": np.array([0, 1, 2]), "posY": np.array([5, 5, 9])}
    classes, images = known.truth.counterfactual(rows, do)
    assert isinstance(known.truth, VariantTruth)
    for b, row in enumerate(rows.tolist()):
        noise = {k: v[[row]] for k, v in known.truth.noise.items()}
        one = {"shape": int(do["shape"][b]), "posY": int(do["posY"][b])}
        expected = true_counterfactual(CHAIN, noise, known.data.factors([row]), one)
        np.testing.assert_array_equal(classes[b], expected[0][0])
        np.testing.assert_array_equal(images[b], expected[1][0])
    contenders = load_contenders(
        ["oracle", "identity"], known.schema, known.truth, torch.device("cpu")
    )
    result, _ = run_benchmark(known, contenders, draw_queries(known.data, 15, seed=0), seed=0)
    oracle, identity = (m["metrics"] for m in result["models"])
    assert 0 < result["identified_fraction"] < 1
    assert oracle["truth_iou"] == 1.0 and identity["truth_iou"] < 0.6


@dataclass
class VariantModel:
    """The variant's own tables answering from the factual classes: noise drawn from its exact
    posterior (a perfect model) or, with `prior`, from its prior (an intervention)."""

    spec: Any
    prior: bool = False

    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        classes = np.asarray(factors, np.int64)
        noise = abduct_noise(self.spec, classes, seed=7)
        if self.prior:
            noise = {k: sample_gumbels(v.shape, torch.Generator().manual_seed(7)).numpy()
                     for k, v in noise.items()}  # fmt: skip
        out = np.empty_like(images)
        keys = np.stack([np.asarray(v) for v in do.values()], 1) if do else np.zeros((len(out), 0))
        for key in np.unique(keys, axis=0):
            at = (keys == key).all(1)
            one = {name: int(v) for name, v in zip(do, key, strict=True)}
            part = {k: v[at] for k, v in noise.items()}
            out[at] = true_counterfactual(self.spec, part, classes[at], one)[1]
        return out


def test_distribution_distance_on_unidentified_queries(tmp_path: Path) -> None:
    """On a variant's unidentified queries a perfect model's answers sit at the floor of the
    (factual, counterfactual) distribution's TV, an intervention and identity above it; the
    truth itself below it (it knows the recorded noise)."""
    spec = replace(CHAIN, num_samples=3000)
    known = known_data(str(sample_variant(spec, tmp_path / "chain.npz")))
    models = {"perfect": VariantModel(spec), "prior": VariantModel(spec, prior=True)}
    contenders = load_contenders(["oracle", "identity"], known.schema, known.truth, "cpu")
    contenders += [Contender(name, "test", model) for name, model in models.items()]
    queries = draw_queries(known.data, 450, seed=0)
    result, _ = run_benchmark(known, contenders, queries, seed=0)
    scores = {m["name"]: m["metrics"] for m in result["models"]}
    assert set(scores["perfect"]["distribution"]) == {"scale", "posX"}
    floor = scores["perfect"]["distribution_tv_floor"]
    assert all(s["distribution_tv_floor"] == floor for s in scores.values())
    assert scores["oracle"]["distribution_tv"] < 0.05 < floor
    assert abs(scores["perfect"]["distribution_tv"] - floor) < 0.08
    assert scores["prior"]["distribution_tv"] > floor + 0.1
    assert scores["identity"]["distribution_tv"] > floor + 0.1


def test_pendulum_truth_scored_by_error(tmp_path: Path) -> None:
    path, _ = pendulum.write(tmp_path / "pendulum.npz", 60, progress=False)
    known = known_data(str(path))
    contenders = load_contenders(
        ["oracle", "identity"], known.schema, known.truth, torch.device("cpu")
    )
    queries = draw_queries(known.data, 12, seed=0)
    result, _ = run_benchmark(known, contenders, queries, seed=0, oracle_steps=ORACLE_STEPS)
    oracle, identity = (m["metrics"] for m in result["models"])
    assert result["truth_metric"] == "truth_mae" and result["reader"].startswith("an oracle")
    assert oracle["truth_mae"] == 0.0 and oracle["truth_psnr"] == 100.0
    assert identity["truth_mae"] > 1.0 and identity["composition_10"] == 0.0
    assert abs(oracle["realism_fd"]) < 1e-6 < identity["realism_fd"]
    assert oracle["effectiveness"] == result["reader_ceiling"]
    # Per intervened factor too: the truth's answers read as well as the reader reads the truth.
    per_factor = result["reader_ceiling_per_factor"]
    assert oracle["effectiveness_per_factor"] == per_factor
    assert set(per_factor) <= set(known.schema.names) and len(per_factor) >= 2
    assert all(0.0 <= value <= 1.0 for value in per_factor.values())
    assert identity["effectiveness_per_factor"].keys() == per_factor.keys()


def test_continuous_variant_truth_is_found_and_scored(tmp_path: Path) -> None:
    spec = load_any(Path(__file__).parents[1] / "examples" / "variants" / "chain_continuous.yaml")
    assert isinstance(spec, ContinuousSpec)
    small = parse_any({**spec.to_dict(), "num_samples": 60})
    assert isinstance(small, ContinuousSpec)
    known = known_data(str(sample_continuous(small, tmp_path / "chain.npz")))
    assert isinstance(known.truth, ContinuousTruth) and known.edges == spec.edges
    assert known.descendants(["scale"]) == {"posX", "posY"} and known.identified(["scale"])
    contenders = load_contenders(
        ["oracle", "identity"], known.schema, known.truth, torch.device("cpu")
    )
    queries = draw_queries(known.data, 12, seed=0)
    result, _ = run_benchmark(known, contenders, queries, seed=0, oracle_steps=ORACLE_STEPS)
    oracle, identity = (m["metrics"] for m in result["models"])
    assert result["truth_metric"] == "truth_iou" and result["identified_fraction"] == 1.0
    assert oracle["truth_iou"] == 1.0 and identity["truth_iou"] < 0.8
    # dSprites' oracle reads grid classes, not continuous values: the data's own oracle reads.
    assert result["reader"].startswith("an oracle trained on the dataset's other rows")
    assert oracle["effectiveness"] == result["reader_ceiling"]


def test_user_model_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    stdout, _ = run(
        "benchmark", "--dataset", "dsprites", "--model", "identity",
        "--model", "tests.user_model:make", "--model", "tests.user_model:half",
        "--queries", 30, "--device", "cpu", "--out", out, "--json",
    )  # fmt: skip
    result = json.loads(stdout)
    assert json.loads((out / "benchmark.json").read_text()) == result
    identity, user, half = result["models"]
    assert user["status"] == "ok" and half["status"] == "failed"
    assert half["error"] == "returned images of shape (2, 32, 64), expected (2, 64, 64)"
    moved = [k for k in user["metrics"]["per_do"] if set(k.split("+")) <= {"posX", "posY"}]
    for kind in moved:  # shifting pixels answers do(posX) and do(posY) far better than nothing
        assert user["metrics"]["per_do"][kind] > identity["metrics"]["per_do"][kind] + 0.3
    assert user["metrics"]["per_do"]["shape"] == identity["metrics"]["per_do"]["shape"]
    lines = (out / "queries.jsonl").read_text().splitlines()
    assert len(lines) == 30 and result["num_queries"] == 30
    assert "| tests.user_model:half | failed: returned images" in (out / "benchmark.md").read_text()
    page = (out / "benchmark.html").read_text()
    assert page.count("data:image/png;base64,") == 6 * 4  # factual, truth, identity, user
    assert "<td class=name>tests.user_model:make</td>" in page


def test_same_seed_same_json_but_timings(tmp_path: Path) -> None:
    def bench(out: Path) -> dict[str, Any]:
        args = ["--dataset", "dsprites", "--model", "oracle", "--model", "resample"]
        run("benchmark", *args, "--queries", 15, "--device", "cpu", "--out", out)
        result = json.loads((out / "benchmark.json").read_text())
        for model in result["models"]:
            model.pop("seconds_per_1000")
        return result

    assert bench(tmp_path / "a") == bench(tmp_path / "b")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nowhere", "--model", "identity"], "error: unknown dataset 'nowhere'"),
        (["--dataset", "dsprites", "--model", "identity", "--queries", 0], "--queries must be 1"),
        (["--dataset", "dsprites", "--model", "identity", "--queries", 10**9], "--queries must"),
        (["--dataset", "dsprites", "--model", "nosuchmodule:make"], "cannot import nosuchmodule"),
        (["--dataset", "dsprites", "--model", "tests.user_model:nothing"], "no callable nothing"),
        (["--dataset", "dsprites", "--model", "tests.user_model:broken"], "has no counterfactual"),
        (["--dataset", "dsprites", "--model", "no_run_dir"], "run directory no_run_dir does not"),
        (["--dataset", "dsprites", "--model", "tests.user_model:raising"], "raised RuntimeError"),
        (["--dataset", "dsprites", "--model", "identity", "--model", "identity"], "named twice"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[Any], message: str
) -> None:
    out = tmp_path / "bench"
    _, stderr = run("benchmark", *args, "--out", out, code=1)
    assert message in stderr
    assert not out.exists()


def test_every_model_failing_exits_1_with_the_results_written(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["--dataset", "dsprites", "--model", "tests.user_model:nan", "--queries", 4]
    _, stderr = run("benchmark", *args, "--out", out, code=1)
    assert stderr.endswith("tests.user_model:nan: returned float64 images with NaN, not uint8\n")
    (model,) = json.loads((out / "benchmark.json").read_text())["models"]
    assert model["status"] == "failed" and model["metrics"] == {}


def test_factory_errors(dsprites: Known) -> None:
    with pytest.raises(CausalSpritesError, match=r"expected package\.module:factory"):
        load_factory("tests.user_model:", dsprites.schema, "cpu")
    assert load_factory("tests.user_model:make", dsprites.schema, "cpu").names[0] == "shape"


def test_dataset_without_truth_is_refused(tmp_path: Path) -> None:
    from causal_sprites.data.dataset import write_dataset
    from causal_sprites.data.schema import Schema, categorical

    schema = Schema("squares", (categorical("hue", ["a", "b"]),), (32, 32, 1))
    images = np.zeros((5, 32, 32), np.uint8)
    path = write_dataset(tmp_path / "d.npz", iter([images]), np.zeros((5, 1)), schema)
    _, stderr = run("benchmark", "--dataset", path, "--model", "identity", code=1)
    assert "counterfactual scores need a dataset whose true counterfactuals are known" in stderr
