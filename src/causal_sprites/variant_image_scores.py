"""Counterfactual soundness (Monteiro et al. 2023) on a causal variant of any dataset that holds
every factor combination (`data/variants.py`): each held-out sample's counterfactual against the
true image, the base's image at the true counterfactual classes (from the recorded noise) with the
sample's recorded nuisance, as dSprites' variants are scored against the generator's. Part of
`evaluation`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from causal_sprites.batches import split_rows
from causal_sprites.data.variants import (
    BASE_ROW,
    VariantSpec,
    abduct_noise,
    counterfactual_classes,
    true_candidates,
    true_images,
)
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import (
    accuracy,
    counterfactual_tv,
    effectiveness,
    mean_abs_error,
    preservation,
    preserved_mask,
    psnr,
    summarize,
)
from causal_sprites.scores import COMPOSITION_MAE_NOTE, VariantImageCounterfactualScores

#: Base images a counterfactual is compared with when the base cannot tell which is the truth
#: (the first ones in row order): the error is the smallest against them.
MAX_CANDIDATES: Final = 64
#: What a variant's counterfactual is scored against.
TRUTH: Final = (
    "the base dataset's image at the true counterfactual classes (recorded noise) with the "
    "sample's recorded nuisance; where several base images remain (truth_unique < 1), the "
    "closest of them"
)


def _closest(
    images: np.ndarray, candidates: list[np.ndarray], base: Any, scale: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image (B, ...), the MAE and PSNR (B,) against the closest (by MAE) of its candidate
    base rows' images (the first MAX_CANDIDATES of each), and whether those are one image (B,)
    bool (rows recorded alike that draw the same pixels)."""
    errors, peaks = np.empty(len(images)), np.empty(len(images))
    unique = np.empty(len(images), dtype=bool)
    for b, rows in enumerate(candidates):
        truths = base.images(rows[:MAX_CANDIDATES]) * scale
        image = np.broadcast_to(images[b] * scale, truths.shape)
        mae = mean_abs_error(image, truths)
        best = int(np.argmin(mae))
        errors[b], peaks[b] = mae[best], psnr(image[best : best + 1], truths[best : best + 1])[0]
        unique[b] = len(rows) <= MAX_CANDIDATES and bool((truths == truths[:1]).all())
    return errors, peaks, unique


def _under(
    spec: VariantSpec,
    noise: Mapping[str, np.ndarray],
    factual: np.ndarray,
    name: str,
    values: np.ndarray,
) -> np.ndarray:
    """Counterfactual classes (B, K) of factual classes (B, K) with their noise under
    do(name = values (B,)), one value at a time."""
    classes = np.empty_like(factual)
    for value in np.unique(values):
        chosen = values == value
        rows = {k: v[chosen] for k, v in noise.items()}
        classes[chosen] = counterfactual_classes(spec, rows, factual[chosen], {name: int(value)})
    return classes


class PosteriorReader:
    """Reads factors (B, K) off images as the mode of a run's own posterior p(y | x): the
    reader where no independent oracle exists for a dataset (it checks self-consistency, and
    overrates a model that draws what it reads)."""

    name: Final = "the run's own posterior p(y | x) (no independent oracle for this dataset)"

    def __init__(self, run: Any) -> None:
        self.run = run

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The posterior's mode (B, K) of images (B, ...)."""
        return np.asarray(self.run.infer(images, top=1).mode)


def score_variant_image_counterfactuals(
    run: Any,
    data: Any,
    variant: tuple[VariantSpec, dict[str, np.ndarray]],
    oracle: Any = None,
    num_images: int = 128,
    seed: int = 0,
    num_noise_samples: int = 2000,
) -> VariantImageCounterfactualScores:
    """Counterfactuals of held-out samples of a variant dataset file (`data`, with its
    `base_row`s; `variant` its (spec, recorded noise)), each sent to a random other value of one
    factor at a time: the error (MAE per sub-pixel on the 0-255 scale, PSNR in dB) against the
    true image (`TRUTH`), whether the counterfactual classes are the true ones, effectiveness and
    preservation (exact classes; preservation of the factors the true graph leaves alone) read
    back by `oracle` or else the run's own posterior, reversibility and composition against the
    input; with a perfect model's ceilings (the true tables, noise abducted from the factual
    classes) and the TV of the model's counterfactual factor distribution (`counterfactual_tv`,
    `num_noise_samples` draws) beside its floor, as `evaluation.score_counterfactuals` on
    dSprites' variants."""
    spec, recorded = variant
    schema, base = spec.schema, spec.base
    extra = getattr(data, "extra", {})
    if BASE_ROW not in extra:
        raise CausalSpritesError(f"the data has no {BASE_ROW}: it is not a variant's dataset file")
    base_rows = np.asarray(extra[BASE_ROW])
    scale = 255 if schema.binary else 1  # errors on the 0-255 scale
    _, test_rows = split_rows(data, run.config)
    rng = np.random.default_rng(seed)
    reader = oracle if oracle is not None else PosteriorReader(run)

    def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
        return rows, data.images(rows), np.asarray(data.factors(rows), np.int64)

    per_factor: dict[str, dict[str, float]] = {}
    for column, (name, size) in enumerate(schema.size_of.items()):
        rows, images, factual = sample()
        like = base_rows[rows]
        values = (factual[:, column] + rng.integers(1, size, len(rows))) % size
        result = run.counterfactual_query(images, factual, do={name: values}, seed=seed)
        noise = {k: v[rows] for k, v in recorded.items()}
        true_classes = _under(spec, noise, factual, name, values)
        candidates = true_candidates(spec, true_classes, like)
        error, peak, unique = _closest(result.images, candidates, base, scale)
        intervened = np.zeros_like(factual, dtype=bool)
        intervened[:, column] = True
        asked = factual.copy()
        asked[:, column] = values
        predicted = reader.predict(result.images)
        kept = preserved_mask(intervened, spec.edges, schema.names)
        back = run.counterfactual_query(
            result.images, result.counterfactual, do={name: factual[:, column]}, seed=seed
        )
        tv, floor = counterfactual_tv(
            run.factor_graph, spec.graph, factual, {name: values}, num_noise_samples, seed
        )
        perfect = _under(spec, abduct_noise(spec, factual, seed), factual, name, values)
        ceiling, _, _ = _closest(true_images(spec, perfect, like), candidates, base, scale)
        returned = _under(
            spec, abduct_noise(spec, perfect, seed), perfect, name, factual[:, column]
        )
        per_factor[name] = {
            "ground_truth_mae": summarize(error),
            "ground_truth_psnr": summarize(peak),
            "counterfactual_classes_correct": accuracy(result.counterfactual, true_classes),
            "effectiveness": effectiveness(predicted, asked, intervened, schema, None)["overall"],
            "preservation": preservation(predicted, factual, kept, schema, None)["overall"],
            "reversibility_mae": summarize(mean_abs_error(back.images * scale, images * scale)),
            "reversibility_psnr": summarize(psnr(back.images * scale, images * scale)),
            "identified": not spec.descendants([name]),
            "counterfactual_tv": tv,
            "counterfactual_tv_floor": floor,
            "ground_truth_mae_ceiling": summarize(ceiling),
            "counterfactual_classes_correct_ceiling": accuracy(perfect, true_classes),
            "reversibility_mae_ceiling": summarize(
                mean_abs_error(true_images(spec, returned, like) * scale, images * scale)
            ),
            "truth_unique": float(unique.mean()),
        }
    _, images, factual = sample()
    current, composed = images, []
    for _ in range(10):
        current = run.counterfactual(current, factual, do={}, seed=seed)
        composed.append(summarize(mean_abs_error(current * scale, images * scale)))

    def pooled(key: str, identified_only: bool = False) -> float:
        chosen = [s[key] for s in per_factor.values() if s["identified"] or not identified_only]
        return float(np.nanmean(chosen)) if chosen else float("nan")

    return VariantImageCounterfactualScores(
        ground_truth_mae=pooled("ground_truth_mae"),
        ground_truth_psnr=pooled("ground_truth_psnr"),
        counterfactual_classes_correct=pooled("counterfactual_classes_correct"),
        effectiveness=pooled("effectiveness"),
        preservation=pooled("preservation"),
        reader=getattr(reader, "name", "the oracle"),
        reversibility_mae=pooled("reversibility_mae"),
        reversibility_psnr=pooled("reversibility_psnr"),
        composition_mae_1=composed[0],
        composition_mae_10=composed[9],
        composition_note=COMPOSITION_MAE_NOTE,
        truth=TRUTH,
        per_factor=per_factor,
        num_images_per_factor=len(factual),
        ground_truth_mae_ceiling=pooled("ground_truth_mae_ceiling"),
        ground_truth_mae_identified=pooled("ground_truth_mae", identified_only=True),
        counterfactual_classes_correct_ceiling=pooled("counterfactual_classes_correct_ceiling"),
        reversibility_mae_ceiling=pooled("reversibility_mae_ceiling"),
        counterfactual_tv=pooled("counterfactual_tv"),
        counterfactual_tv_floor=pooled("counterfactual_tv_floor"),
        num_noise_samples=num_noise_samples,
        identified_factors=[n for n, s in per_factor.items() if s["identified"]],
        preservation_graph="true",
        truth_unique=pooled("truth_unique"),
    )
