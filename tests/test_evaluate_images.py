"""`evaluate` and `report` on your own images: a colour run on the squares of test_any_images
(hue, side, left; the background a nuisance) scores in nats and bits per dimension, reconstruction
MAE and PSNR and the readout with the data's factor names; counterfactuals are scored against the
data's own images where every factor combination is there once, and refused in one line where the
truth is unknown; the report shows every section it can with the schema's names and says why the
others are not available."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import load_dataset, write_dataset
from causal_sprites.metrics import combination_rows
from causal_sprites.report import write_report
from causal_sprites.train import fit
from tests.cli_run import run
from tests.test_any_images import SCHEMA, render, squares

NAMES = {"hue", "side", "left"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A run trained 30 steps on every combination three times over random backgrounds
    (repeated.npz), and the same combinations once on one background (once.npz: its own truth)."""
    root = tmp_path_factory.mktemp("evaluate")
    images, classes, _ = squares(3, seed=0)
    write_dataset(root / "repeated.npz", images, classes, SCHEMA)
    once = classes[:36]
    write_dataset(root / "once.npz", render(once, np.full(36, 120)), once, SCHEMA)
    preset = PRESETS["images"]
    config = replace(
        preset,
        data=str(root / "repeated.npz"),
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(
            preset.train, max_steps=30, bf16=False, num_eval_images=32, test_fraction=0.25
        ),
    )
    data = load_dataset(root / "repeated.npz")
    fit(root / "run", config, data, torch.device("cpu"), progress=False)
    return root, root / "run", root / "once.npz"


@pytest.fixture(scope="module")
def scores(trained: tuple[Path, Path, Path]) -> dict:
    _, run_dir, _ = trained
    return json.loads(run("evaluate", run_dir, "--num-images", 64, "--json")[0])


def test_evaluate_scores_bits_per_dim_errors_and_the_readout_by_the_data_s_names(
    scores: dict,
) -> None:
    assert scores["test_nelbo"] > 0 and scores["test_recon"] > 0 and scores["test_kl"] >= 0
    assert scores["test_nelbo"] == pytest.approx(scores["test_recon"] + scores["test_kl"])
    dims = 32 * 48 * 3
    assert scores["test_bits_per_dim"] == pytest.approx(scores["test_nelbo"] / dims / math.log(2))
    assert 0 < scores["test_bits_per_dim"] < 8  # under 8 bits: better than a uniform byte
    assert 0 < scores["recon_mae"] < 255 and 0 < scores["recon_psnr"] <= 100
    assert scores["recon_iou"] is None  # colour images: IoU means nothing, the key stays
    assert scores["num_test_images"] == 27  # a quarter of 108
    for per_factor in (scores["classifier_accuracy"], scores["z_leakage"]):
        assert set(per_factor) == NAMES and all(0 <= v <= 1 for v in per_factor.values())
    readout = scores["readout"]
    assert readout["num_images"] == 27 and readout["weak_readout"] is None
    for reader in ("classifier", "posterior"):
        assert set(readout[reader]["exact"]) == NAMES and "image_equivalent" not in readout[reader]
        assert all(0 <= v <= 1 for v in readout[reader]["exact"].values())
        assert 0 <= readout[reader]["all_exact"] <= min(readout[reader]["exact"].values())


def test_evaluate_prints_the_same_as_text(trained: tuple[Path, Path, Path]) -> None:
    _, run_dir, _ = trained
    text = run("evaluate", run_dir, "--num-images", 16)[0]
    assert "test_bits_per_dim: " in text and "recon_psnr: " in text
    assert "recon_iou" not in text and "classifier_accuracy: hue " in text


def test_counterfactuals_are_scored_against_the_data_s_own_images_where_it_holds_them(
    trained: tuple[Path, Path, Path],
) -> None:
    _, run_dir, once = trained
    out, _ = run(
        "evaluate", run_dir, "--data", once, "--counterfactual", "--num-images", 16,
        "--num-counterfactuals", 4, "--json",
    )  # fmt: skip
    scores = json.loads(out)
    assert scores["test_bits_per_dim"] > 0 and set(scores["per_factor"]) == NAMES
    assert 0 <= scores["ground_truth_mae"] < 255 and 0 < scores["ground_truth_psnr"] <= 100
    for key in ("effectiveness", "preservation", "counterfactual_classes_correct"):
        assert 0 <= scores[key] <= 1
    assert scores["counterfactual_classes_correct"] == 1.0  # no edges: only the target moves
    assert scores["composition_mae_1"] == scores["composition_mae_10"] == 0.0  # exact abduction
    assert scores["num_images_per_factor"] == 4 and "own posterior" in scores["reader"]
    _, err = run("evaluate", run_dir, "--counterfactual", code=1)
    assert "need a dataset whose true counterfactuals are known: dSprites or its variants" in err
    assert "(squares has 108 images for 36 combinations)" in err


def test_combination_rows_find_each_combination_only_where_it_is_there_once() -> None:
    _, classes, _ = squares(1, seed=0)
    order = np.random.default_rng(0).permutation(len(classes))
    rows = combination_rows(classes[order], (3, 3, 4))
    assert rows is not None
    wanted = np.array([[2, 0, 3], [0, 1, 0]])
    np.testing.assert_array_equal(classes[order][rows[np.ravel_multi_index(wanted.T, (3, 3, 4))]],
                                  wanted)  # fmt: skip
    assert combination_rows(np.concatenate([classes, classes]), (3, 3, 4)) is None
    assert combination_rows(np.concatenate([classes[1:], classes[:1]]), (3, 3, 4)) is not None
    assert combination_rows(np.concatenate([classes[1:], classes[1:2]]), (3, 3, 4)) is None


def test_the_report_shows_the_data_s_queries_and_names_and_says_what_is_not_available(
    trained: tuple[Path, Path, Path], scores: dict
) -> None:
    root, run_dir, _ = trained
    out = write_report(str(run_dir), load_dataset(root / "repeated.npz"), scores=scores)
    page = out.read_text()
    assert out == run_dir / "report.html"
    for section in ("data", "training", "reconstructions", "queries", "soundness", "discovery"):
        assert f'<section id="{section}">' in page
    summary = "squares: 108 colour images of 32x48 pixels (height x width); hue (3: red, green"
    assert summary + ", blue)" in page
    for caption in (
        "Conditioning on hue = blue",
        "Intervention do(hue = red)",
        "Counterfactuals under do(hue = another class)",
        "Traversals",
        "An edit",
    ):
        assert caption in page
    assert page.count("<img ") == 8  # samples, curve, reconstructions, edit, traversals, 3 queries
    assert "<th>hue</th><th>side</th><th>left</th>" in page  # the per-factor tables
    assert "<td>test_bits_per_dim</td>" in page
    assert page.count("<svg") == 2 and ">hue</text>" in page and ">shape</text>" not in page
    missing = [line for line in page.splitlines() if "Not available" in line]
    assert len(missing) == 3
    assert "fidelity to real frames is measured for dSprites only" in missing[0]
    assert "training benchmarks (bench/train.py) are dSprites" in missing[1]
    assert "counterfactual scores need a dataset whose true counterfactuals are known" in missing[2]
