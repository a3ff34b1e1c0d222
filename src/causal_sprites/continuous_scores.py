"""Counterfactual soundness on data whose generator is known (`truth.KnownGenerator`: the
pendulum, continuous variants of dSprites), where factors may be continuous: each held-out
image's counterfactual against the true render, with the run's reconstruction of that render and
the input unchanged beside it; effectiveness, the descendants and preservation as errors in each
factor's unit, read back by the run's own posterior; composition and reversibility; and the run's
interventional distributions against the generator's (Wasserstein-1 per continuous factor beside
the floor a perfect model gets), for `evaluate --counterfactual`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
from scipy.stats import wasserstein_distance

from causal_sprites.batches import split_rows
from causal_sprites.continuous_metrics import value_error
from causal_sprites.counterfactual_scores import COMPOSITION_NOTE
from causal_sprites.data.schema import Factor
from causal_sprites.metrics import iou, mean_abs_error, preserved_mask, psnr, summarize
from causal_sprites.scm.factor_sampling import draw_under
from causal_sprites.scm.inputs import as_interventions, seeded
from causal_sprites.scores import Evaluation, ImageRunScores, PerFactor, RunScores, Scores
from causal_sprites.truth import KnownGenerator
from causal_sprites.variant_image_scores import PosteriorReader

#: What a counterfactual is scored against.
TRUTH: Final = (
    "the generator's render of the true counterfactual factors (the intervened factors set, "
    "their descendants recomputed from the image's recorded noise)"
)
#: Where the do() values of the distributions lie in a continuous root's range (fractions).
LEVELS: Final = (0.25, 0.5, 0.75)
#: Null interventions in a row for composition.
REPEATS: Final = 10


@dataclass(frozen=True)
class OptionalScores(Scores):
    """A result whose None fields (IoU on images that are not binary) print no line."""

    def lines(self) -> list[str]:
        """As `Scores.lines`, without the fields that are None."""
        shown = [getattr(self, f.name) is not None for f in fields(self)]
        return [text for text, keep in zip(super().lines(), shown, strict=True) if keep]


@dataclass(frozen=True)
class FactorContinuousScores(OptionalScores):
    """Counterfactuals under do() of one factor: the error against the true image (MAE per
    sub-pixel, 0-255 scale; PSNR in dB; IoU on binary images), the run's reconstruction of that
    true image and the ratio of the two errors, the input unchanged (`copy_`); effectiveness
    (the readout's error on the intervened factor, mean and median), the readout's error on each
    descendant against the true counterfactual factors and on each other factor against the
    factual readout (`preservation_mae`), the run's own counterfactual values of the
    descendants against the true ones (identified: the noise is recorded and abduction exact),
    and reversibility (do back to the factual value) against the input. Errors are in each
    factor's unit (the share read wrong for a categorical one)."""

    ground_truth_mae: float
    ground_truth_psnr: float
    ground_truth_iou: float | None
    recon_of_truth_mae: float
    mae_ratio: float
    copy_mae: float
    copy_psnr: float
    copy_iou: float | None
    effectiveness_mae: float
    effectiveness_median: float
    descendant_mae: PerFactor
    preservation_mae: PerFactor
    counterfactual_factor_mae: PerFactor
    reversibility_mae: float
    reversibility_psnr: float
    reversibility_iou: float | None


@dataclass(frozen=True)
class ContinuousCounterfactualScores(OptionalScores):
    """Counterfactuals on data with a known truth (`score_continuous_counterfactuals`): the
    image errors pooled over the intervened factors (`mae_ratio` is the pooled counterfactual
    error over the pooled reconstruction error of the true images: 1 is as good as the run draws
    the truth itself); the readout's errors by the factor read (`effectiveness_` by intervened
    factor, `descendant_mae` and `preservation_mae` pooled over the interventions that move or
    keep it); composition (do(every factor = its observed value) once and ten times: the share
    of images returned pixel for pixel, and the MAE); reversibility; `per_factor` holds each
    intervention's own scores."""

    ground_truth_mae: float
    ground_truth_psnr: float
    ground_truth_iou: float | None
    recon_of_truth_mae: float
    mae_ratio: float
    copy_mae: float
    copy_psnr: float
    copy_iou: float | None
    effectiveness_mae: PerFactor
    effectiveness_median: PerFactor
    descendant_mae: PerFactor
    preservation_mae: PerFactor
    counterfactual_factor_mae: PerFactor
    reversibility_mae: float
    reversibility_psnr: float
    reversibility_iou: float | None
    composition_exact_1: float
    composition_exact_10: float
    composition_mae_1: float
    composition_mae_10: float
    composition_note: str
    reader: str
    factual_labels: str
    preservation_graph: str
    truth: str
    per_factor: dict[str, FactorContinuousScores]
    num_images_per_factor: int


@dataclass(frozen=True)
class ContinuousDistributionEntry(Scores):
    """P(factors | do(set = value)): Wasserstein-1 per continuous factor (in its unit) between
    the run's draws and the generator's, and the floor: the same between two independent draws
    of the generator of the same size (what a perfect model scores)."""

    set: str
    value: float
    w1: PerFactor
    w1_floor: PerFactor


@dataclass(frozen=True)
class ContinuousDistributionScores(Scores):
    """Interventional distributions against the generator's (`score_continuous_distributions`):
    per continuous factor the largest W1 over `entries` and the largest floor, from
    `num_samples` draws of each."""

    w1: PerFactor
    w1_floor: PerFactor
    num_samples: int
    truth_draws: str
    model_draws: str
    entries: list[ContinuousDistributionEntry]


@dataclass(frozen=True)
class ContinuousEvaluation:
    """What `evaluate --counterfactual` prints on data with a known truth: the run's scores,
    the counterfactual ones, then `distributions` (as `scores.Evaluation`)."""

    run: RunScores | ImageRunScores
    counterfactuals: ContinuousCounterfactualScores
    distributions: ContinuousDistributionScores

    def to_json(self) -> dict[str, Any]:
        """One flat object: the run's keys, the counterfactual ones, then `distributions`."""
        out = Evaluation(self.run).to_json()
        out.update(self.counterfactuals.to_json())
        out["distributions"] = self.distributions.to_json()
        return out

    def lines(self) -> list[str]:
        """The text output, in the order of `to_json`."""
        run = Evaluation(self.run).lines()
        return run + self.counterfactuals.lines() + self.distributions.lines()


def _scaled(images: np.ndarray, binary: bool) -> np.ndarray:
    """Images as float on the 0-255 scale (binary images' 0/1 times 255)."""
    return np.asarray(images, np.float64) * (255 if binary else 1)


def _image_errors(key: str, images: np.ndarray, truth: np.ndarray, binary: bool) -> dict[str, Any]:
    """`{key}_mae` (0-255 scale), `{key}_psnr` (dB) and `{key}_iou` (binary images, else None)
    of images (B, ...) against the true ones, each the mean over images."""
    a, b = _scaled(images, binary), _scaled(truth, binary)
    return {
        f"{key}_mae": summarize(mean_abs_error(a, b)),
        f"{key}_psnr": summarize(psnr(a, b)),
        f"{key}_iou": summarize(iou(images, truth)) if binary else None,
    }


def _ratio(error: float, reference: float) -> float:
    """error / reference (inf or nan where the reference is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(error) / reference)


def _do_values(factor: Factor, factual: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One do() value per image: uniform over a continuous factor's range, a random other class
    of a categorical one."""
    if factor.kind == "continuous":
        assert factor.low is not None and factor.high is not None
        return rng.uniform(factor.low, factor.high, len(factual))
    return (factual.astype(np.int64) + rng.integers(1, factor.size, len(factual))) % factor.size


def _errors(
    factors: tuple[Factor, ...], columns: np.ndarray, a: np.ndarray, b: np.ndarray
) -> PerFactor:
    """The mean `value_error` of each chosen column (bool (K,)) of two factor arrays (B, K)."""
    return {
        factor.name: summarize(value_error(factor, a[:, k], b[:, k]))
        for k, factor in enumerate(factors)
        if columns[k]
    }


def _by_factor(scores: list[PerFactor], names: tuple[str, ...]) -> PerFactor:
    """The mean of each factor's entries (in the order of `names`) over the dicts that have it."""
    return {
        n: float(np.mean([s[n] for s in scores if n in s]))
        for n in names
        if any(n in s for s in scores)
    }


def score_continuous_counterfactuals(
    run: Any,
    data: Any,
    truth: KnownGenerator,
    num_images: int = 128,
    seed: int = 0,
    reader: Any = None,
    given_labels: bool = True,
) -> ContinuousCounterfactualScores:
    """Counterfactuals of `num_images` held-out images under do() of each factor in turn (values
    uniform over a continuous factor's range, seeded), against `truth`'s exact answer, with the
    factual labels given (else read off the pixels); read back by `reader` (default: the run's
    own posterior, `PosteriorReader`, no independent oracle existing for such data). Descendants
    and preservation follow the truth's graph."""
    schema = truth.schema
    binary = bool(schema.binary)
    _, test_rows = split_rows(data, run.config)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
    images, factual = data.images(rows), np.asarray(data.factors(rows), np.float64)
    labels = factual if given_labels else None
    reader = reader if reader is not None else PosteriorReader(run)
    read_factual = np.asarray(reader.predict(images), np.float64)
    per_factor: dict[str, FactorContinuousScores] = {}
    for column, factor in enumerate(schema.factors):
        values = _do_values(factor, factual[:, column], rng)
        result = run.counterfactual_query(images, labels, do={factor.name: values}, seed=seed)
        true_factors, true_images = truth.counterfactual(rows, {factor.name: values})
        read = np.asarray(reader.predict(result.images), np.float64)
        intervened = np.arange(len(schema.factors)) == column
        kept = preserved_mask(intervened[None], truth.edges, schema.names)[0]
        moved = ~kept & ~intervened
        back = run.counterfactual_query(
            result.images, result.counterfactual, do={factor.name: factual[:, column]}, seed=seed
        )
        reconstructed = run.reconstruct(true_images, true_factors)
        found = _image_errors("ground_truth", result.images, true_images, binary)
        redrawn = _image_errors("recon_of_truth", reconstructed, true_images, binary)
        effect = value_error(factor, read[:, column], values)
        per_factor[factor.name] = FactorContinuousScores(
            **found,
            recon_of_truth_mae=redrawn["recon_of_truth_mae"],
            mae_ratio=_ratio(found["ground_truth_mae"], redrawn["recon_of_truth_mae"]),
            **_image_errors("copy", images, true_images, binary),
            effectiveness_mae=summarize(effect),
            effectiveness_median=float(np.median(effect)),
            descendant_mae=_errors(schema.factors, moved, read, true_factors),
            preservation_mae=_errors(schema.factors, kept, read, read_factual),
            counterfactual_factor_mae=_errors(
                schema.factors, moved, np.asarray(result.counterfactual), true_factors
            ),
            **_image_errors("reversibility", back.images, images, binary),
        )
    observed = {name: factual[:, k] for k, name in enumerate(schema.names)}
    current, composed = images, []
    for _ in range(REPEATS):
        current = run.counterfactual_query(current, labels, do=observed, seed=seed).images
        same = (current == images).reshape(len(images), -1).all(1)
        error = mean_abs_error(_scaled(current, binary), _scaled(images, binary))
        composed.append((summarize(same), summarize(error)))
    scores = list(per_factor.values())

    def pooled(key: str) -> Any:
        found = [getattr(s, key) for s in scores]
        return None if found[0] is None else float(np.mean(found))

    return ContinuousCounterfactualScores(
        ground_truth_mae=pooled("ground_truth_mae"),
        ground_truth_psnr=pooled("ground_truth_psnr"),
        ground_truth_iou=pooled("ground_truth_iou"),
        recon_of_truth_mae=pooled("recon_of_truth_mae"),
        mae_ratio=_ratio(pooled("ground_truth_mae"), pooled("recon_of_truth_mae")),
        copy_mae=pooled("copy_mae"),
        copy_psnr=pooled("copy_psnr"),
        copy_iou=pooled("copy_iou"),
        effectiveness_mae={n: s.effectiveness_mae for n, s in per_factor.items()},
        effectiveness_median={n: s.effectiveness_median for n, s in per_factor.items()},
        descendant_mae=_by_factor([s.descendant_mae for s in scores], schema.names),
        preservation_mae=_by_factor([s.preservation_mae for s in scores], schema.names),
        counterfactual_factor_mae=_by_factor(
            [s.counterfactual_factor_mae for s in scores], schema.names
        ),
        reversibility_mae=pooled("reversibility_mae"),
        reversibility_psnr=pooled("reversibility_psnr"),
        reversibility_iou=pooled("reversibility_iou"),
        composition_exact_1=composed[0][0],
        composition_exact_10=composed[-1][0],
        composition_mae_1=composed[0][1],
        composition_mae_10=composed[-1][1],
        composition_note=COMPOSITION_NOTE,
        reader=getattr(reader, "name", "the oracle"),
        factual_labels="given" if given_labels else "inferred",
        preservation_graph="true",
        truth=TRUTH,
        per_factor=per_factor,
        num_images_per_factor=len(rows),
    )


def _levels(factor: Factor) -> list[float]:
    """A root's do() values for the distributions: at `LEVELS` of a continuous factor's range,
    the classes there of a categorical one."""
    if factor.kind == "continuous":
        assert factor.low is not None and factor.high is not None
        return [factor.low + q * (factor.high - factor.low) for q in LEVELS]
    return sorted({float(round(q * (factor.size - 1))) for q in LEVELS})


#: Draws of the run and of the generator per do() of the distributions (factor rows, no images).
NUM_DRAWS: Final = 2000
#: Draws (N, K) of factors under do({factor: value}): (do, num_samples, seed) -> array.
Sampler = Callable[[Mapping[str, float], int, int], np.ndarray]


def run_sampler(run: Any) -> Sampler:
    """The run's P(factors | do()): rows of its factor SCM under do, the draws `intervene_query`
    summarises, without decoding an image for each."""

    def draw(do: Mapping[str, float], num_samples: int, seed: int) -> np.ndarray:
        fixed = as_interventions(do, 1, run.schema)
        with seeded(seed):
            rows = draw_under(run.model, {name: v[0] for name, v in fixed.items()}, num_samples)
        return rows.double().cpu().numpy()

    return draw


def score_continuous_distributions(
    run: Any,
    truth: KnownGenerator,
    num_samples: int = NUM_DRAWS,
    seed: int = 0,
    sampler: Sampler | None = None,
) -> ContinuousDistributionScores:
    """The run's P(factors | do(root = v)) against the generator's, for each root of the
    truth's graph at a few values (`LEVELS`): Wasserstein-1 per continuous factor not intervened
    on, between `num_samples` draws of `sampler` (default: the run's, `run_sampler`) and as
    many of `truth.interventional`, beside the floor (two independent draws of the truth)."""
    schema = truth.schema
    draw = sampler if sampler is not None else run_sampler(run)
    children = {child for _, child in truth.edges}
    queries = [(f, v) for f in schema.factors if f.name not in children for v in _levels(f)]
    entries = []
    for index, (root, value) in enumerate(queries):
        do = {root.name: value if root.kind == "continuous" else int(value)}
        query_seed = seed + 2 * index
        drawn = draw(do, num_samples, query_seed)
        first = truth.interventional(do, num_samples, query_seed)
        second = truth.interventional(do, num_samples, query_seed + 1)
        targets = [
            (k, f.name)
            for k, f in enumerate(schema.factors)
            if f.kind == "continuous" and f.name != root.name
        ]
        entries.append(
            ContinuousDistributionEntry(
                set=root.name,
                value=float(value),
                w1={n: float(wasserstein_distance(drawn[:, k], first[:, k])) for k, n in targets},
                w1_floor={
                    n: float(wasserstein_distance(second[:, k], first[:, k])) for k, n in targets
                },
            )
        )

    def largest(key: str) -> PerFactor:
        found = [getattr(e, key) for e in entries]
        names = dict.fromkeys(n for f in found for n in f)
        return {n: max(f[n] for f in found if n in f) for n in names}

    return ContinuousDistributionScores(
        w1=largest("w1"),
        w1_floor=largest("w1_floor"),
        num_samples=num_samples,
        truth_draws="the generator under do() with fresh noise (truth.interventional)",
        model_draws="the run's factor SCM under do() (the draws intervene_query summarises)",
        entries=entries,
    )
