"""The readout's second look at doubted images (`SearchBudget.refine`, `joint.refined_elbo`): on
8-bit images, where the search's mode is not the classifier's tuple, the finalists are scored
again with q(z | x, y)'s location refined; binary images and agreed images keep their scores."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.app_text import candidates_text
from causal_sprites.cli.queries import DOUBTED_LABELS
from causal_sprites.config import PRESETS
from causal_sprites.data.load import load_data
from causal_sprites.model import readout
from causal_sprites.model.joint import elbo, refined_elbo
from causal_sprites.model.readout import (
    AGREE_SHARE,
    REFINE_FINALISTS,
    FactorPosterior,
    SearchBudget,
    infer_posterior,
)
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.scm.queries import CausalModel, load_run
from tests.cli_run import run
from tests.test_any_images import SCHEMA, squares
from tests.test_cli_queries import write_png


@pytest.fixture(scope="module")
def model() -> ConditionalVAE:
    """A briefly trained 8-bit model: it reads some images, and its search and its classifier
    disagree on others."""
    preset = PRESETS["images"]
    torch.manual_seed(0)
    vae = ConditionalVAE(replace(preset.model, conv_channels=16, encoder_hidden=64), (), SCHEMA)
    x, y = images_and_classes()
    optimiser = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(30):
        loss = vae.loss(x, y, classifier_weight=1.0)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return vae.eval()


def images_and_classes() -> tuple[torch.Tensor, torch.Tensor]:
    images, classes, _ = squares(1, seed=0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float(), torch.from_numpy(classes)


def test_the_refined_bound_is_never_below_the_encoder_s_and_leaves_the_model_alone(
    model: ConditionalVAE,
) -> None:
    x, y = images_and_classes()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        features = model.features(x)
        amortised = elbo(model, x, features, y)
        refined = refined_elbo(model, x, features, y)
    assert (refined >= amortised).all()
    assert (refined - amortised).median() > 1.0  # nats: Adam finds a better z on most images
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(refined_elbo(model, x, features, y, steps=0), amortised)


def test_only_doubted_images_are_refined_and_their_answer_follows_the_refined_score(
    model: ConditionalVAE, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in refinement that favours the classifier's tuple by 10^4 nats: each doubted
    image's mode becomes its classifier's tuple, every other image keeps the search's mode,
    and only the doubted images' finalists (at most REFINE_FINALISTS + 1 each) are refined."""
    x, _ = images_and_classes()
    with torch.no_grad():
        classifier = torch.stack([out.argmax(-1) for out in model.classify(x)], 1)
    seen: list[torch.Tensor] = []

    def favour_classifier(vae, images, features, tuples, steps=50):  # type: ignore[no-untyped-def]
        seen.append(tuples)
        bonus = torch.zeros(len(tuples))
        for row, image in enumerate(images):
            match = (x == image).flatten(1).all(1).nonzero()[0, 0]
            bonus[row] = 1e4 * float((tuples[row] == classifier[match]).all())
        return elbo(vae, images, features, tuples) + bonus

    plain = infer_posterior(model, x, top=1, budget=SearchBudget(refine=False))
    doubted = (plain.mode != classifier.numpy()).any(1)
    assert 0 < doubted.sum() < len(x)  # the fixture disagrees on some images, not all
    everything = infer_posterior(model, x, top=2048, budget=SearchBudget(refine=False))
    share = [  # the posterior probability of each image's classifier tuple
        everything.probabilities[b][(everything.classes[b] == classifier[b].numpy()).all(1)].sum()
        for b in range(len(x))
    ]
    np.testing.assert_array_equal(plain.classifier_agrees, np.array(share) >= AGREE_SHARE)
    assert not plain.classifier_agrees.all()
    monkeypatch.setattr(readout, "refined_elbo", favour_classifier)
    second = infer_posterior(model, x, top=1)
    np.testing.assert_array_equal(second.mode[doubted], classifier.numpy()[doubted])
    np.testing.assert_array_equal(second.mode[~doubted], plain.mode[~doubted])
    assert second.classifier_agrees.all()
    refined_rows = sum(len(t) for t in seen)
    assert doubted.sum() * 2 <= refined_rows <= doubted.sum() * (REFINE_FINALISTS + 1)
    # The likelihood stays the ELBO at q's mean (what the refusal range measured).
    with torch.no_grad():
        at_mode = elbo(model, x, model.features(x), torch.as_tensor(second.mode))
    np.testing.assert_allclose(second.log_likelihood, at_mode.numpy(), rtol=1e-4, atol=1e-2)


def test_binary_images_and_a_budget_without_refine_never_refine_nor_doubt(
    model: ConditionalVAE, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("refined")

    monkeypatch.setattr(readout, "refined_elbo", refuse)
    x, _ = images_and_classes()
    infer_posterior(model, x, top=1, budget=SearchBudget(refine=False))
    default = PRESETS["default"]
    binary = ConditionalVAE(default.model, default.graph, default.factor_schema).eval()
    sprites = (torch.rand(6, 1, 64, 64) > 0.9).float()
    posterior = infer_posterior(binary, sprites, top=1)  # doubted images, yet no refinement
    assert posterior.mode.shape == (6, 5)
    assert posterior.classifier_agrees.all()  # binary images never raise the doubt


def test_infer_and_counterfactual_warn_where_the_classifier_reads_other_factors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A posterior that disagrees with its classifier is said to be in doubt, in the text and
    the JSON of `infer`, the app's reading and a counterfactual's labels read off the pixels,
    however probable its mode."""
    real_infer = CausalModel.infer

    def disagreeing(self: CausalModel, *args: object, **kwargs: object) -> FactorPosterior:
        posterior = real_infer(self, *args, **kwargs)  # type: ignore[arg-type]
        return replace(posterior, classifier_agrees=np.zeros(len(posterior.mode), dtype=bool))

    agreed, _ = run("infer", "pretrained", "--index", 0)
    assert "in doubt" not in agreed
    monkeypatch.setattr(CausalModel, "infer", disagreeing)
    text, _ = run("infer", "pretrained", "--index", 0)
    assert "warning: the model's classifier q(y | x) reads other factors" in text
    said = json.loads(run("infer", "pretrained", "--index", 0, "--json")[0])
    assert said["images"][0]["classifier_agrees"] is False
    model, image = load_run("pretrained"), load_data().images([0])
    assert "In doubt" in candidates_text(model.infer(image, top=2), 2, None, model.schema)
    sprite = write_png(tmp_path / "sprite.png", image[0] * 255)
    asked = ("counterfactual", "pretrained", "--image", sprite, "--do", "posX=3")
    text, _ = run(*asked)
    assert f"  warning: {DOUBTED_LABELS}" in text
    (query,) = json.loads(run(*asked, "--json")[0])["queries"]
    assert query["labels"] == "inferred" and query["warnings"] == [DOUBTED_LABELS]
    monkeypatch.setattr(CausalModel, "infer", real_infer)
    assert "In doubt" not in candidates_text(model.infer(image, top=2), 2, None, model.schema)
    (query,) = json.loads(run(*asked, "--json")[0])["queries"]
    assert query["warnings"] == []
