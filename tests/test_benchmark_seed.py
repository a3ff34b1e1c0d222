"""The `seed` contender of `benchmark` (benchmark_seed.py): a tiny baseline-preset (MLP) run whose
style is found by gradient steps; the search beats the prior's mean, do(the observed factors)
gives the input back, the CLI scores it on a marked, seeded subset of the queries beside every
other model on that subset, and bad input is one line."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from causal_sprites.benchmark_contenders import load_contenders
from causal_sprites.benchmark_seed import (
    SeedModel,
    search_style,
    style_log_joint,
    subset_queries,
)
from causal_sprites.benchmark_truth import known_data
from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import NUM_IMAGES, index_to_classes
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.inputs import as_images, as_labels
from causal_sprites.scm.queries import CausalModel, load_run
from tests.cli_run import run

QUERIES, SEED_QUERIES = 20, 6


@pytest.fixture(scope="module")
def data() -> DSprites:
    """600 random dSprites rows."""
    rows = np.sort(np.random.default_rng(1).choice(NUM_IMAGES, 600, replace=False))
    classes = index_to_classes(rows)
    return DSprites.from_arrays(render(classes), classes)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, data: DSprites) -> Path:
    """The baseline preset (MLP encoder and decoder, z 50) with 64 hidden units, 200 steps."""
    from causal_sprites.train import fit

    preset = PRESETS["baseline"]
    config = replace(
        preset,
        model=replace(preset.model, mlp_hidden=64),
        train=replace(preset.train, max_steps=200, batch_size=64, num_eval_images=64),
    )
    out = tmp_path_factory.mktemp("seed") / "baseline"
    fit(out, config, data, torch.device("cpu"), progress=False)
    return out


@pytest.fixture(scope="module")
def model(baseline: Path) -> CausalModel:
    return load_run(baseline)


def test_the_search_beats_the_prior_mean(model: CausalModel, data: DSprites) -> None:
    vae, rows = model.model, np.arange(16)
    pixels = vae.site_images(as_images(data.images(rows), model.schema))
    labels = as_labels(data.classes(rows), len(rows), model.schema)
    found = search_style(vae, pixels, labels)
    assert found.shape == (16, 50)
    with torch.no_grad():
        start = style_log_joint(vae, pixels, labels, torch.zeros_like(found))
        searched = style_log_joint(vae, pixels, labels, found)
        fewer = style_log_joint(vae, pixels, labels, search_style(vae, pixels, labels, 20))
    assert bool((searched > start).all())
    assert float((searched - start).mean()) > 5.0  # nats per image
    assert float(searched.mean()) >= float(fewer.mean())  # more steps, no worse
    assert torch.equal(found, search_style(vae, pixels, labels))  # deterministic


def test_do_the_observed_factors_returns_the_input(model: CausalModel, data: DSprites) -> None:
    rows = np.arange(24)
    images, factors = data.images(rows), data.classes(rows)[:, 1:].astype(np.float64)
    seed = SeedModel(model, seed=0, steps=50)
    same = seed.counterfactual(images, factors, {"posX": factors[:, 3].astype(np.int64)})
    assert same.dtype == np.uint8 and same.shape == images.shape
    np.testing.assert_array_equal(same, images)
    moved = seed.counterfactual(images, factors, {"posX": np.full(24, 31)})
    assert (moved != images).any()
    assert len(seed.found) == 24  # one search per image and factors: the second reused them
    seed.counterfactual(moved, factors, {})
    changed = (moved != images).any(axis=(1, 2))
    new = {m.tobytes() + f.tobytes() for m, f in zip(moved[changed], factors[changed], strict=True)}
    assert len(new) > 0 and len(seed.found) == 24 + len(new)


def test_the_subset_is_seeded_and_whole_when_large_enough() -> None:
    first = subset_queries(1000, 50, seed=0)
    assert len(first) == 50 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, subset_queries(1000, 50, seed=0))
    assert not np.array_equal(first, subset_queries(1000, 50, seed=1))
    np.testing.assert_array_equal(subset_queries(30, 50, seed=0), np.arange(30))


def test_seed_uses_the_first_mlp_run_and_keeps_the_order(baseline: Path) -> None:
    known = known_data("dsprites")
    names = ["seed", "identity", "pretrained", str(baseline)]
    contenders = load_contenders(names, known.schema, known.truth, torch.device("cpu"))
    assert [c.name for c in contenders] == names
    seed = contenders[0]
    assert seed.subset is not None and seed.kind.startswith(str(baseline))
    with pytest.raises(CausalSpritesError, match="none of pretrained has decoder mlp"):
        load_contenders(["pretrained", "seed"], known.schema, known.truth, torch.device("cpu"))


def test_benchmark_scores_seed_on_a_marked_subset(baseline: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    stdout, _ = run(
        "benchmark", "--dataset", "dsprites", "--model", baseline, "--model", "seed",
        "--queries", QUERIES, "--seed-queries", SEED_QUERIES, "--device", "cpu",
        "--out", out, "--json",
    )  # fmt: skip
    result = json.loads(stdout)
    assert json.loads((out / "benchmark.json").read_text()) == result
    ours, seed = result["models"]
    assert seed["status"] == "ok" and seed["subset"] is True
    assert seed["queries_answered"] == result["subset_queries"] == SEED_QUERIES
    assert "subset" not in ours and ours["status"] == "ok"
    for key in ("truth_iou", "effectiveness", "preservation", "composition_1", "composition_10",
                "reversibility", "realism_fd"):  # fmt: skip
        for metrics in (seed["metrics"], ours["metrics"], ours["metrics_on_subset"]):
            assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert seed["seconds_per_1000"] > 0
    # Null interventions of an exact pixel abduction change nothing, whatever z the search found.
    assert seed["metrics"]["composition_1"] == seed["metrics"]["composition_10"] == 1.0
    assert result["proxy_rank_correlation_excludes"] == ["seed"]
    assert set(result["proxy_rank_correlation_subset"]) == set(result["proxy_rank_correlation"])
    table = (out / "benchmark.md").read_text()
    assert "| seed \u2020 | ok |" in table
    assert f"\u2020 answered a seeded subset of {SEED_QUERIES} of the {QUERIES} queries" in table
    assert f"On the {SEED_QUERIES} subset queries:" in table
    page = (out / "benchmark.html").read_text()
    assert "<td class=name>seed \u2020</td>" in page and "rho on the subset" in page
    assert page.count("data:image/png;base64,") == 6 * 4  # factual, truth, the run, seed


def _same_but_timings(result: dict[str, Any]) -> dict[str, Any]:
    for model in result["models"]:
        model.pop("seconds_per_1000")
    return result


def test_seed_answers_every_query_when_allowed(baseline: Path, tmp_path: Path) -> None:
    def bench(out: Path) -> dict[str, Any]:
        args = ["--dataset", "dsprites", "--model", baseline, "--model", "seed", "--queries", 4]
        run("benchmark", *args, "--seed-queries", 10, "--device", "cpu", "--out", out)
        return _same_but_timings(json.loads((out / "benchmark.json").read_text()))

    result = bench(tmp_path / "a")
    seed = result["models"][1]
    assert seed["subset"] is False and seed["queries_answered"] == 4
    assert "subset_queries" not in result and "metrics_on_subset" not in result["models"][0]
    assert "\u2020" not in (tmp_path / "a" / "benchmark.md").read_text()
    assert bench(tmp_path / "b") == result  # reproducible but for timings


@pytest.mark.parametrize(
    ("models", "extra", "message"),
    [
        (["seed"], [], "--model seed needs a run of the baseline preset among the models, and no"),
        (["pretrained", "seed"], [], "and none of pretrained has decoder mlp: train one with"),
        (["identity", "seed"], ["--seed-queries", 0], "--seed-queries must be 1 to 100,000"),
        (["seed", "seed"], [], "--model seed is named twice"),
    ],
)
def test_bad_seed_input_is_one_line_and_writes_nothing(
    tmp_path: Path, models: list[str], extra: list[Any], message: str
) -> None:
    out = tmp_path / "bench"
    named = [arg for name in models for arg in ("--model", name)]
    _, stderr = run("benchmark", "--dataset", "dsprites", *named, *extra, "--out", out, code=1)
    assert message in stderr
    assert not out.exists()
