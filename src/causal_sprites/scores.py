"""Typed results of `evaluation.py`. Each knows its JSON (`to_json`: the keys of the `evaluate
--json` contract, in their order) and its text (`lines`: one aligned `name: value` line per
field, formatted by the field's declared type; nested results are left to --json)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

#: A value per factor, {factor: value} (`overall` too where it has one).
PerFactor = dict[str, float]
#: Width of the right-aligned names in the text output.
NAME_WIDTH: Final = 28
#: How a field prints, by its declared type; a nested result prints as `(see --json)`.
FORMATS: Final[dict[str, Callable[[Any], str]]] = {
    "float": lambda value: f"{value:.4f}",
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
    the budget ended (`model.readout.SearchBudget`) and, for a run too weak for a pixel readout,
    why (`weak_readout`, else null)."""

    num_images: int
    classifier: dict[str, Any]
    posterior: dict[str, Any]
    num_stopped_on_budget: int
    weak_readout: str | None


def readout_warning(readout: dict[str, Any]) -> str | None:
    """What a user must know of a readout (`Readout.to_json()`) before trusting it: how many
    images' searches stopped on the budget, and why a weak run's readout is cut short."""
    stopped, total, weak = (
        readout[k] for k in ("num_stopped_on_budget", "num_images", "weak_readout")
    )
    if not stopped and weak is None:
        return None
    text = f"{stopped} of {total} images' factor searches stopped on the budget"
    return f"{text}; {weak}" if weak else text


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
    (`evaluation.score_distributions`): the largest TVs over `entries` and their sampling floor."""

    tv_intervention: float
    tv_condition: float
    tv_intervention_oracle: float
    tv_condition_oracle: float
    sampling_floor: float
    num_samples: int
    truth: str
    entries: list[DistributionEntry]

    def to_json(self) -> dict[str, Any]:
        """As `Scores.to_json`, each entry by its own `to_json`."""
        return {**super().to_json(), "entries": [entry.to_json() for entry in self.entries]}


@dataclass(frozen=True)
class Evaluation:
    """What `causal-sprites evaluate` prints: a run's scores, with --counterfactual also its
    counterfactual soundness and distributions; one flat JSON object, as the contract has it."""

    run: RunScores
    counterfactuals: CounterfactualScores | None = None
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
