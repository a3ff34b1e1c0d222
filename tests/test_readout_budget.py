"""The posterior search's budget: a weak run skips the wider searches and says so, a cap on
scored tuples holds, the pretrained model's answers do not move, and every surface (infer --json,
evaluate, the report) marks the images whose search the budget ended."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import NUM_IMAGES, SIZES, index_to_classes
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.evaluation import score_run
from causal_sprites.model.readout import ESCALATE_NATS, SearchBudget, weak_readout
from causal_sprites.report import write_report
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit
from tests.cli_run import run

#: The search before the budget: every wider search, no cap.
UNBOUNDED = SearchBudget(max_scored=10**9)


def sprites(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(seed).choice(NUM_IMAGES, count, replace=False)
    classes = index_to_classes(rows)
    return render(classes), classes[:, 1:]


@pytest.fixture
def misled(model: CausalModel, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Sprites (12, 64, 64) whose classifier is sure of a wrong shape and gives the true one
    nothing: the pretrained model's search must widen to every shape to read them."""
    images, classes = sprites(12, seed=7)
    wrong = (classes + np.array([1, 0, 0, 0, 0])) % np.array(SIZES)

    def misleading(x: torch.Tensor, features: torch.Tensor | None = None) -> list[torch.Tensor]:
        logits = []
        for i, size in enumerate(SIZES):
            probs = torch.full((len(x), size), 1e-4)
            probs[torch.arange(len(x)), torch.as_tensor(wrong[:, i])] = 0.9
            logits.append(probs.log())
        return logits

    monkeypatch.setattr(model.model, "classify", misleading)
    return images


def test_the_pretrained_readout_is_the_unbounded_one(
    model: CausalModel, misled: np.ndarray
) -> None:
    assert model.weak_readout is None and model.search_budget.escalate
    bounded, unbounded = model.infer(misled), model.infer(misled, budget=UNBOUNDED)
    np.testing.assert_array_equal(bounded.classes, unbounded.classes)
    np.testing.assert_array_equal(bounded.probabilities, unbounded.probabilities)
    np.testing.assert_array_equal(bounded.num_scored, unbounded.num_scored)
    assert bounded.complete.all()  # every wider search ran: finished, however well it explains
    assert bounded.num_scored.min() > 500  # they did widen to every shape, within the cap


def test_a_skipped_or_late_escalation_marks_the_images(
    model: CausalModel, misled: np.ndarray
) -> None:
    images = misled
    skipped = model.infer(images, budget=SearchBudget(escalate=False))
    stuck = skipped.log_likelihood < ESCALATE_NATS
    assert stuck.any()
    np.testing.assert_array_equal(skipped.complete, ~stuck)
    late = model.infer(images, budget=SearchBudget(max_seconds=0.0))  # no wider search starts
    np.testing.assert_array_equal(late.classes, skipped.classes)
    np.testing.assert_array_equal(late.complete, skipped.complete)


def test_the_cap_on_scored_tuples_holds(model: CausalModel, misled: np.ndarray) -> None:
    images = misled
    capped = model.infer(images, budget=SearchBudget(max_scored=40))
    assert capped.num_scored.max() <= 40
    np.testing.assert_array_equal(capped.complete, capped.log_likelihood >= ESCALATE_NATS)
    assert not capped.complete.all()
    with pytest.raises(CausalSpritesError, match="max_scored must be >= 1"):
        SearchBudget(max_scored=0)


def test_weak_readout_reads_the_held_out_median() -> None:
    assert weak_readout(None) is None
    assert weak_readout({"median": -0.5, "threshold": -100.0}) is None
    note = weak_readout({"median": -539.4, "threshold": -29000.0})
    assert note is not None and "too weak for a pixel readout" in note and "-539" in note


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory: pytest.TempPathFactory, tiny_data_file: Path) -> Path:
    """A run trained 3 steps: it explains no image yet."""
    tiny = PRESETS["tiny"]
    config = replace(
        tiny,
        data=str(tiny_data_file),
        train=replace(tiny.train, max_steps=3, bf16=False, num_eval_images=16, batch_size=16),
    )
    out = tmp_path_factory.mktemp("weak")
    fit(out, config, DSprites.load(tiny_data_file), torch.device("cpu"), progress=False)
    return out


def test_a_weak_run_says_its_readout_stopped_on_the_budget(
    weak_run: Path, subset_data: DSprites, tmp_path: Path
) -> None:
    """Scored and reported on 180 images (the report reads every image of the data it is given:
    600 took 4x as long and say the same)."""
    model = load_run(weak_run)
    assert model.weak_readout is not None and not model.search_budget.escalate
    readout = score_run(model, subset_data, num_images=64, num_posterior_images=32).readout
    assert readout.weak_readout == model.weak_readout and readout.num_stopped_on_budget > 0
    page = write_report(model, subset_data, tmp_path / "r.html", soundness={"effectiveness": 0.5})
    text = page.read_text()
    assert "images&#39; factor searches stopped on the budget" in text
    assert "too weak for a pixel readout" in text
    assert "stopped on its budget: this graph is not to be trusted" in text


def test_infer_json_marks_each_image(weak_run: Path, tiny_data_file: Path) -> None:
    out, _ = run("infer", weak_run, "--data", tiny_data_file, "--limit", 16, "--json")
    result = json.loads(out)
    searches = [image["search"] for image in result["images"]]
    assert set(searches) <= {"complete", "budget"} and "budget" in searches
    assert "too weak" in result["weak_readout"]
    for image in result["images"]:
        assert (image["search"] == "budget") == (image["log_likelihood"] < ESCALATE_NATS)
    text, _ = run("infer", weak_run, "--data", tiny_data_file, "--limit", 2)
    assert "note: the model is too weak for a pixel readout" in text
