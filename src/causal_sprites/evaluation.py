"""Evaluation of a run: test NELBO and reconstructions, factors read off pixels, counterfactual
soundness against the truth (dSprites' own images, a causal variant's recorded noise and true
tables, the base images of a variant of any dataset), and conditional and interventional
distributions. Built from the pure metrics of `metrics.py`; `score_*` return the typed results of
`scores.py`, `evaluate*` the same as JSON dicts. The run's scores live here, the counterfactual
ones in `counterfactual_scores` and `variant_image_scores`, the distributions in
`distribution_scores`; all are importable from here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec

import numpy as np
import torch

from causal_sprites.batches import split_rows, training_images, training_labels
from causal_sprites.continuous_metrics import factor_leakage, factor_readout
from causal_sprites.counterfactual_scores import COMPOSITION_NOTE, score_counterfactuals
from causal_sprites.data.dsprites import DSprites
from causal_sprites.distribution_scores import score_distributions
from causal_sprites.metrics import (
    iou,
    mean_abs_error,
    pixel_error,
    psnr,
    readout_accuracy,
    summarize,
)
from causal_sprites.model.pixels import bits_per_dim
from causal_sprites.model.refine import propose
from causal_sprites.scm.inputs import as_images
from causal_sprites.scores import (
    ContinuousRunScores,
    ImageRunScores,
    Readout,
    RunScores,
    Scores,
    score_image_counterfactuals,
)
from causal_sprites.train import evaluate_nelbo
from causal_sprites.variant_image_scores import (
    PosteriorReader,
    score_variant_image_counterfactuals,
)

__all__ = [
    "COMPOSITION_NOTE",
    "PosteriorReader",
    "as_json",
    "evaluate",
    "evaluate_counterfactuals",
    "evaluate_distributions",
    "evaluate_image_counterfactuals",
    "held_out_sample",
    "score_counterfactuals",
    "score_distributions",
    "score_image_counterfactuals",
    "score_run",
    "score_variant_image_counterfactuals",
]

Params = ParamSpec("Params")


def held_out_sample(
    test_rows: np.ndarray, num_images: int, num_subset: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random `num_images` of the test rows, sorted (for reading), and a mask (bool) of a
    random `num_subset` of those: not the first ones, since sorted rows run shape by shape and
    the first eighth of them are all small squares."""
    drawn = np.random.default_rng(seed).permutation(test_rows)[:num_images]
    rows = np.sort(drawn)
    return rows, np.isin(rows, drawn[:num_subset])


def _classifier_readout(model: Any, images: np.ndarray, schema: Any) -> np.ndarray:
    """Factors (B, K) read off images by q(y | x) alone: each categorical factor's argmax, each
    continuous factor's regression head (in its unit)."""
    x = as_images(images, schema).to(next(model.parameters()).device)
    with torch.no_grad():
        features = model.features(x)
        logits = iter(model.classify(x, features))
        proposed = propose(model, x, features)[0].T if schema.continuous else torch.empty(0)
        values = iter(proposed)
        columns = [
            next(logits).argmax(-1).double() if f.kind == "categorical" else next(values).double()
            for f in schema.factors
        ]
    return torch.stack(columns, -1).cpu().numpy()


def score_run(
    run: Any, data: Any, num_images: int = 4096, seed: int = 0, num_posterior_images: int = 512
) -> RunScores | ImageRunScores:
    """Test-set metrics of a run: NELBO (recon, KL), classifier accuracy per factor, the
    reconstruction's error and z-leakage, on up to `num_images` held-out images; on a random
    `num_posterior_images` of them, factors read off the pixels by q(y | x) alone and by the
    posterior's mode (`readout`). On dSprites `RunScores` (reconstruction IoU and pixel error;
    `readout_accuracy`), on other categorical data `ImageRunScores` (bits per dimension, MAE and
    PSNR; `exact_readout`), on data with continuous factors `ContinuousRunScores` (errors in
    each factor's unit; z-leakage of a continuous factor as a probe's R^2)."""
    model, config, schema = run.model, run.config, run.schema
    dsprites = isinstance(data, DSprites)
    _, test_rows = split_rows(data, config)
    rows, chosen = held_out_sample(test_rows, num_images, num_posterior_images, seed)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        images_of = training_images(data, device)
        nelbo = evaluate_nelbo(model, images_of, training_labels(data, device), rows)
        kind = np.int64 if schema.categorical else np.float64
        images, labels = data.images(rows), np.asarray(data.factors(rows), kind)
        recon, codes = run.reconstruct_with_codes(images, labels)
        leakage = factor_leakage(codes, labels, schema, seed=seed)
        read_by_classifier = _classifier_readout(model, images[chosen], schema)
        posterior = run.infer(images[chosen], top=1)
        truth = labels[chosen]

        def scored(read: np.ndarray) -> dict[str, Any]:
            if dsprites:
                return readout_accuracy(read.astype(np.int64), truth, images[chosen], schema)
            return factor_readout(read, truth, schema)

        readout = Readout(
            num_images=len(truth),
            classifier=scored(read_by_classifier),
            posterior=scored(posterior.mode),
            num_stopped_on_budget=int((~posterior.complete).sum()),
            weak_readout=run.weak_readout,
            num_doubted=int((~posterior.classifier_agrees).sum()),
        )
        if dsprites:
            return RunScores(
                **nelbo,
                num_test_images=len(rows),
                recon_iou=summarize(iou(recon, images)),
                recon_pixel_error=summarize(pixel_error(recon, images)),
                z_leakage=leakage,
                readout=readout,
            )
        scale = 255 if schema.binary else 1  # errors on the 0-255 scale
        common = dict(
            test_bits_per_dim=bits_per_dim(nelbo["test_nelbo"], int(np.prod(schema.image_shape))),
            num_test_images=len(rows),
            recon_mae=summarize(mean_abs_error(recon * scale, images * scale)),
            recon_psnr=summarize(psnr(recon * scale, images * scale)),
            recon_iou=summarize(iou(recon, images)) if schema.binary else None,
            z_leakage=leakage,
            readout=readout,
        )
        if schema.categorical:
            return ImageRunScores(**nelbo, **common)
        return ContinuousRunScores(**nelbo, **common)


def as_json(score: Callable[Params, Scores]) -> Callable[Params, dict[str, Any]]:
    """The same evaluation returning its result's JSON (a dict), for callers that index it."""

    def evaluate_as_json(*args: Params.args, **kwargs: Params.kwargs) -> dict[str, Any]:
        return score(*args, **kwargs).to_json()

    return evaluate_as_json


evaluate = as_json(score_run)
evaluate_counterfactuals = as_json(score_counterfactuals)
evaluate_image_counterfactuals = as_json(score_image_counterfactuals)
evaluate_distributions = as_json(score_distributions)
