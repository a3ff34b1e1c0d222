"""Typed results of `evaluation.py`. Each knows its JSON (`to_json`: the keys of the `evaluate
--json` contract, in their order) and its text (`lines`: one aligned `name: value` line per
field, formatted by the field's declared type; nested results are left to --json). Beside its
result, the scoring of counterfactuals on data that holds its own truth (any dataset with every
factor combination once: `score_image_counterfactuals`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np

from causal_sprites.batches import split_rows
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import accuracy, combination_rows, mean_abs_error, psnr, summarize

#: A value per factor, {factor: value} (`overall` too where it has one).
PerFactor = dict[str, float]
#: Width of the right-aligned names in the text output.
NAME_WIDTH: Final = 28
#: How a field prints, by its declared type; a nested result prints as `(see --json)`.
FORMATS: Final[dict[str, Callable[[Any], str]]] = {
    "float": lambda value: f"{value:.4f}",
    "float | None": lambda value: "n/a" if value is None else f"{value:.4f}",
    "int": str,
    "str": str,
    "bool": str,
    "PerFactor": lambda value: ", ".join(f"{k} {v:.3f}" for k, v in value.items()),
    "list[str]": ", ".join,
}


def line(name: str, text: str) -> str:
    """One line of the text output: the name right-aligned, then its value."""
    return f"{name:>{NAME_WIDTH}}: {text}"


@dataclass(frozen=True)
class Scores:
    """A result: JSON and text lines, field by field in declaration order."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (nested results become objects)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """One `name: value` line per field."""
        return [
            line(f.name, FORMATS.get(str(f.type), lambda _: "(see --json)")(getattr(self, f.name)))
            for f in fields(self)
        ]


@dataclass(frozen=True)
class Readout(Scores):
    """Factors read off `num_images` images by the classifier's argmax and by the posterior's
    mode, each scored by `metrics.readout_accuracy`; `num_stopped_on_budget` images whose search
    the budget ended (`model.readout.SearchBudget`), for a run too weak for a pixel readout,
    why (`weak_readout`, else null), and `num_doubted` images whose posterior rules out the
    classifier's reading (`FactorPosterior.classifier_agrees`)."""

    num_images: int
    classifier: dict[str, Any]
    posterior: dict[str, Any]
    num_stopped_on_budget: int
    weak_readout: str | None
    num_doubted: int = 0


def readout_warning(readout: dict[str, Any]) -> str | None:
    """What a user must know of a readout (`Readout.to_json()`) before trusting it: how many
    images' searches stopped on the budget, why a weak run's readout is cut short, and how many
    readings are in doubt."""
    stopped, total, weak = (
        readout[k] for k in ("num_stopped_on_budget", "num_images", "weak_readout")
    )
    doubted = readout.get("num_doubted", 0)
    parts = []
    if stopped:
        parts.append(f"{stopped} of {total} images' factor searches stopped on the budget")
    if weak is not None:
        parts.append(weak)
    if doubted:
        parts.append(f"{doubted} of {total} readings in doubt (the classifier reads other factors)")
    return "; ".join(parts) or None


@dataclass(frozen=True)
class RunScores(Scores):
    """Test-set metrics of a run (`evaluation.score_run`): NELBO and its terms (nats/image),
    classifier accuracy, reconstruction IoU and pixel error, z-leakage and the readout."""

    test_recon: float
    test_kl: float
    test_nelbo: float
    classifier_accuracy: PerFactor
    num_test_images: int
    recon_iou: float
    recon_pixel_error: float
    z_leakage: PerFactor
    readout: Readout


@dataclass(frozen=True)
class ImageRunScores(Scores):
    """Test-set metrics of a run on any dataset but dSprites (`evaluation.score_run`): NELBO and
    its terms (nats/image) and bits per sub-pixel, classifier accuracy, the reconstruction's
    mean absolute error per sub-pixel (0-255 scale) and PSNR (dB, peak 255), its IoU on binary
    images only (null on 8-bit ones: the contract's key stays), z-leakage and the readout (exact
    accuracy per factor)."""

    test_recon: float
    test_kl: float
    test_nelbo: float
    test_bits_per_dim: float
    classifier_accuracy: PerFactor
    num_test_images: int
    recon_mae: float
    recon_psnr: float
    recon_iou: float | None
    z_leakage: PerFactor
    readout: Readout

    def lines(self) -> list[str]:
        """As `Scores.lines`, without `recon_iou` on 8-bit images."""
        drop = line("recon_iou", "n/a")
        return [text for text in super().lines() if text != drop]


@dataclass(frozen=True)
class ContinuousRunScores(ImageRunScores):
    """As `ImageRunScores` on data with continuous factors (`classifier_accuracy` then holds the
    categorical ones only, z-leakage of a continuous one is a linear probe's held-out R^2, the
    readout is scored by `continuous_metrics.factor_readout`), with q(y | x)'s regression head's
    mean absolute error per continuous factor in its unit."""

    regression_mae: PerFactor


@dataclass(frozen=True)
class ImageCounterfactualScores(Scores):
    """Counterfactuals on a dataset that holds every factor combination exactly once, so the true
    counterfactual of an image is the data's image at the changed factors
    (`evaluation.score_image_counterfactuals`): per intervened factor and pooled, the error
    against that truth (mean absolute per sub-pixel, 0-255 scale; PSNR in dB), whether the
    counterfactual classes are the true ones, effectiveness and preservation as read back by
    `reader`, reversibility (do(a -> b), then do(b -> a)) and composition (the null intervention
    once and ten times) against the input."""

    ground_truth_mae: float
    ground_truth_psnr: float
    counterfactual_classes_correct: float
    effectiveness: float
    preservation: float
    reader: str
    reversibility_mae: float
    reversibility_psnr: float
    composition_mae_1: float
    composition_mae_10: float
    composition_note: str
    truth: str
    per_factor: dict[str, dict[str, float]]
    num_images_per_factor: int


@dataclass(frozen=True)
class VariantImageCounterfactualScores(ImageCounterfactualScores):
    """Counterfactuals on a causal variant of a dataset that holds every factor combination
    (`variant_image_scores.score_variant_image_counterfactuals`): as `ImageCounterfactualScores`,
    against the base's image at the true counterfactual classes (from the recorded noise) with
    the sample's recorded nuisance; `truth_unique` is the fraction of queries whose truth is one
    image (the rest are scored against the closest of the base's images with the true classes
    that its records cannot tell apart).
    Beside them, as on dSprites' variants: a perfect model's `_ceiling`, the pooled error of the
    `identified_factors` only, the counterfactual factor distribution's TV and its floor, and
    preservation judged against the true graph (`preservation_graph`)."""

    ground_truth_mae_ceiling: float
    ground_truth_mae_identified: float
    counterfactual_classes_correct_ceiling: float
    reversibility_mae_ceiling: float
    counterfactual_tv: float
    counterfactual_tv_floor: float
    num_noise_samples: int
    identified_factors: list[str]
    preservation_graph: str
    truth_unique: float


@dataclass(frozen=True)
class FactorCounterfactualScores(Scores):
    """Counterfactual soundness of interventions on one factor, with the perfect model's
    `_ceiling` on the same queries and whether the answer is `identified` from the image."""

    ground_truth_iou: float
    ground_truth_pixel_error: float
    counterfactual_classes_correct: float
    effectiveness: float
    preservation: float
    reversibility_iou: float
    identified: bool
    counterfactual_tv: float
    counterfactual_tv_floor: float
    ground_truth_iou_ceiling: float
    counterfactual_classes_correct_ceiling: float
    reversibility_iou_ceiling: float


@dataclass(frozen=True)
class CounterfactualScores(Scores):
    """Counterfactual soundness pooled over the factors (`evaluation.score_counterfactuals`),
    with each factor's own in `per_factor`."""

    ground_truth_iou: float
    ground_truth_iou_ceiling: float
    ground_truth_iou_identified: float
    effectiveness: float
    preservation: float
    composition_iou_1: float
    composition_iou_10: float
    composition_note: str
    preservation_graph: str
    counterfactual_tv: float
    counterfactual_tv_floor: float
    num_noise_samples: int
    reversibility_iou: float
    reversibility_iou_ceiling: float
    reversibility_iou_identified: float
    identified_factors: list[str]
    per_factor: dict[str, FactorCounterfactualScores]
    num_images_per_factor: int


@dataclass(frozen=True)
class QueryScores(Scores):
    """One conditional or interventional query's total variations against its truth (see
    `evaluation.score_distributions`) and the seconds it took."""

    tv_scm: float
    tv_oracle: float
    tv_drawn: float
    tv_oracle_vs_drawn: float
    oracle_agreement: float
    sampling_floor: float
    seconds: float


@dataclass(frozen=True)
class DistributionEntry(Scores):
    """P(target | do(set = value)) and P(target | set = value) against the truth; `edge` and
    `direction` name the truth's edge asked about (None for a pair given by hand), and
    `distributions` holds the distributions themselves when asked for."""

    edge: str | None
    direction: str | None
    set: str
    target: str
    value: int
    intervention: QueryScores
    condition: QueryScores
    truth_tv_do_vs_condition: float
    scm_tv_do_vs_condition: float
    distributions: dict[str, list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        """As `Scores.to_json`, without `distributions` unless they were asked for."""
        out = super().to_json()
        if self.distributions is None:
            del out["distributions"]
        return out


@dataclass(frozen=True)
class DistributionScores(Scores):
    """Conditional and interventional distributions against the truth
    (`evaluation.score_distributions`): the largest TVs over `entries` and their sampling floor;
    `reader` says what read the generated images back (the oracle, or the run's own posterior)."""

    tv_intervention: float
    tv_condition: float
    tv_intervention_oracle: float
    tv_condition_oracle: float
    sampling_floor: float
    num_samples: int
    truth: str
    entries: list[DistributionEntry]
    reader: str = "oracle"

    def to_json(self) -> dict[str, Any]:
        """As `Scores.to_json`, each entry by its own `to_json`."""
        return {**super().to_json(), "entries": [entry.to_json() for entry in self.entries]}


@dataclass(frozen=True)
class Evaluation:
    """What `causal-sprites evaluate` prints: a run's scores, with --counterfactual also its
    counterfactual soundness and distributions; one flat JSON object, as the contract has it."""

    run: RunScores | ImageRunScores
    counterfactuals: CounterfactualScores | ImageCounterfactualScores | None = None
    distributions: DistributionScores | None = None

    def to_json(self) -> dict[str, Any]:
        """The run's keys, then the counterfactual ones, then `distributions`."""
        out = self.run.to_json()
        if self.counterfactuals is not None:
            out.update(self.counterfactuals.to_json())
        if self.distributions is not None:
            out["distributions"] = self.distributions.to_json()
        return out

    def lines(self) -> list[str]:
        """The text output, in the order of `to_json`."""
        out = self.run.lines()
        warning = readout_warning(self.run.readout.to_json())
        if warning is not None:
            out.append(line("readout warning", warning))
        if self.counterfactuals is not None:
            out += self.counterfactuals.lines()
        if self.distributions is not None:
            out.append(line("distributions", "(see --json)"))
        return out


#: Composition's pixel error, as `evaluation.COMPOSITION_NOTE` says of its IoU.
COMPOSITION_MAE_NOTE: Final = (
    "exact by construction (exact abduction); above 0 means abduction is broken"
)


def truth_rows(data: Any, schema: Any) -> np.ndarray:
    """The data's row of each factor combination (`metrics.combination_rows`), or a one-line
    refusal: the true counterfactual of an image is the data's image at the changed factors only
    when every combination is there exactly once (the image then a function of the factors)."""
    rows = combination_rows(data.factors(slice(None)), schema.sizes)
    if rows is None:
        total = int(np.prod(schema.sizes, dtype=np.float64))
        raise CausalSpritesError(
            "counterfactual scores need a dataset whose true counterfactuals are known: dSprites "
            "or its variants, or a dataset holding every factor combination exactly once "
            f"({schema.name} has {len(data):,} images for {total:,} combinations)"
        )
    return rows


def score_image_counterfactuals(
    run: Any, data: Any, num_images: int = 128, seed: int = 0
) -> ImageCounterfactualScores:
    """Counterfactuals of held-out images, each sent to a random other value of one factor at a
    time, against the data's image at the changed factors (`truth_rows`). Effectiveness and
    preservation are read back by the run's own posterior p(y | x): no independent oracle
    exists for such data, so they check self-consistency and overrate a model that draws what
    it reads."""
    schema, rows_of = run.schema, truth_rows(data, run.schema)
    _, test_rows = split_rows(data, run.config)
    rng = np.random.default_rng(seed)
    scale = 255 if schema.binary else 1  # errors on the 0-255 scale

    def errors(key: str, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        a, b = a * scale, b * scale
        return {f"{key}_mae": summarize(mean_abs_error(a, b)), f"{key}_psnr": summarize(psnr(a, b))}

    def sample() -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
        return data.images(rows), data.factors(rows).astype(np.int64)

    per_factor: dict[str, dict[str, float]] = {}
    for column, (name, size) in enumerate(schema.size_of.items()):
        images, factual = sample()
        values = (factual[:, column] + rng.integers(1, size, len(factual))) % size
        result = run.counterfactual_query(images, factual, do={name: values}, seed=seed)
        true_classes = factual.copy()
        true_classes[:, column] = values
        truth = data.images(rows_of[np.ravel_multi_index(true_classes.T, schema.sizes)])
        read = run.infer(result.images, top=1).mode
        others = np.arange(len(schema.names)) != column
        back = run.counterfactual_query(
            result.images, result.counterfactual, do={name: factual[:, column]}, seed=seed
        )
        per_factor[name] = {
            **errors("ground_truth", result.images, truth),
            "counterfactual_classes_correct": accuracy(result.counterfactual, true_classes),
            "effectiveness": accuracy(read[:, column], values),
            "preservation": accuracy(read[:, others], factual[:, others]),
            **errors("reversibility", back.images, images),
        }
    images, factual = sample()
    current, composed = images, []
    for _ in range(10):
        current = run.counterfactual(current, factual, do={}, seed=seed)
        composed.append(summarize(mean_abs_error(current * scale, images * scale)))

    def pooled(key: str) -> float:
        return float(np.mean([scores[key] for scores in per_factor.values()]))

    return ImageCounterfactualScores(
        **{key: pooled(key) for key in next(iter(per_factor.values()))},
        reader="the run's own posterior p(y | x) (no independent oracle for this dataset)",
        composition_mae_1=composed[0],
        composition_mae_10=composed[9],
        composition_note=COMPOSITION_MAE_NOTE,
        truth="the data's image at the changed factors (every factor combination present once)",
        per_factor=per_factor,
        num_images_per_factor=len(factual),
    )
