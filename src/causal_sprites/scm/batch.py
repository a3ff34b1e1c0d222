"""One batched entry for counterfactual questions: rows that each carry their own image, labels
(or none: read off the pixels) and do(), answered in as few model calls as the rows allow (one per
set of intervened factors and label source). The CLI, the app and the benchmarks call it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from causal_sprites.model.readout import DRAW_TOP, FactorPosterior
from causal_sprites.scm.inputs import PixelNoise
from causal_sprites.scm.results import CounterfactualDistribution

if TYPE_CHECKING:
    from causal_sprites.scm.queries import CausalModel


@dataclass(frozen=True)
class Question:
    """A counterfactual question: an image ((64, 64) 0/1 on dSprites; (H, W) or (H, W, C) as the
    run's data holds them), its factor classes (K,) or None (then
    read off the pixels by the posterior: `posterior`, the image's own, when already read), and
    the interventions {factor: class, or a continuous factor's value}."""

    image: np.ndarray
    labels: np.ndarray | None
    do: dict[str, int | float]
    posterior: FactorPosterior | None = None


@dataclass
class Answers:
    """Per question, in order: the counterfactual image (B, 64, 64) uint8, factual and
    counterfactual classes (B, 5), whether the labels were given, the size of the model call it
    was answered in (B,), whether labels read off the pixels are in doubt (B,; the posterior
    rules out the classifier's reading, `FactorPosterior.classifier_agrees`), and, when asked
    for, the distribution over counterfactual tuples (`distributions[k]`: classes (T, 5),
    probabilities (T,), images (T, 64, 64), pixel probabilities (64, 64), method)."""

    images: np.ndarray
    factual: np.ndarray
    counterfactual: np.ndarray
    given: np.ndarray
    batch_size: np.ndarray
    doubted: np.ndarray
    seconds: float = 0.0
    distributions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] = field(
        default_factory=dict
    )


def answer(
    model: CausalModel,
    questions: Sequence[Question],
    seed: int = 0,
    num_samples: int | None = None,
    pixel_noise: PixelNoise | None = None,
) -> Answers:
    """Answer every question, grouped by (intervened factors, labels given), each pixel's noise
    by `pixel_noise` (`abduction.pixel_noise_rule`); with `num_samples` each answer also comes
    as a distribution over that many draws of the abducted noise."""
    count = len(questions)
    height, width, channels = model.schema.image_shape
    image = (height, width) if channels == 1 else (height, width, channels)
    kind = np.int64 if model.schema.categorical else np.float64  # classes, or values in units
    out = Answers(
        np.zeros((count, *image), np.uint8),
        np.zeros((count, len(model.schema.names)), kind),
        np.zeros((count, len(model.schema.names)), kind),
        np.array([q.labels is not None for q in questions], dtype=bool),
        np.zeros(count, np.int64),
        np.zeros(count, dtype=bool),
    )
    groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
    for k, question in enumerate(questions):
        groups.setdefault((tuple(sorted(question.do)), bool(out.given[k])), []).append(k)
    for (names, given), rows in groups.items():
        images = np.stack([questions[k].image for k in rows])
        labels = np.stack([np.asarray(questions[k].labels) for k in rows]) if given else None
        do = {name: np.array([questions[k].do[name] for k in rows]) for name in names}
        posterior = None if given else _posterior(model, [questions[k] for k in rows], images)
        result = model.counterfactual_query(
            images, labels, do or None, seed=seed, posterior=posterior, pixel_noise=pixel_noise
        )
        out.images[rows], out.factual[rows] = result.images, result.factual
        out.counterfactual[rows] = result.counterfactual
        out.batch_size[rows] = len(rows)
        if posterior is not None:
            out.doubted[rows] = ~posterior.classifier_agrees
        out.seconds += result.seconds
        if num_samples is not None:
            spread = model.counterfactual_distribution(
                images, labels, do or None, num_samples, seed, posterior
            )
            out.distributions.update(zip(rows, _per_row(spread), strict=True))
            out.seconds += spread.seconds
    return out


def _posterior(
    model: CausalModel, questions: list[Question], images: np.ndarray
) -> FactorPosterior:
    """The questions' posteriors: read once here unless every question brings its own."""
    known = [q.posterior for q in questions if q.posterior is not None]
    if len(known) == len(questions):
        return FactorPosterior.concatenate(known)
    return model.infer(images, top=DRAW_TOP)


def _per_row(
    spread: CounterfactualDistribution,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]]:
    return list(
        zip(
            spread.classes,
            spread.probabilities,
            spread.images,
            list(spread.pixel_probs),
            spread.method,
            strict=True,
        )
    )
