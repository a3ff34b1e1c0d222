"""What the web app writes: factor values as the user reads them, and the Markdown beside each
counterfactual (the factor table, an upload's candidates, a counterfactual's distribution)."""

from __future__ import annotations

import numpy as np

from causal_sprites.data.factors import FACTORS, SHAPE_NAMES, SIZES
from causal_sprites.model.readout import FactorPosterior

#: Noise draws behind a counterfactual's distribution in the app.
DISTRIBUTION_SAMPLES = 500


def value_choices(name: str) -> list[str]:
    """A factor's values as the dropdowns show them: shape names, else class indices."""
    if name == "shape":
        return list(SHAPE_NAMES)
    return [str(k) for k in range(SIZES[FACTORS.index(name)])]


def value_text(name: str, value: int) -> str:
    """A class index as shown to the user (`heart (2)` for shapes)."""
    return f"{SHAPE_NAMES[value]} ({value})" if name == "shape" else str(value)


def candidates_text(posterior: FactorPosterior, top: int, usual: dict[str, float] | None) -> str:
    """Markdown lines: an upload's (one image's posterior) `top` most probable factor tuples with
    their probabilities, and its log-likelihood beside the held-out data's median."""
    lines = [
        f"**Read off the pixels, p(y | x)** (log-likelihood "
        f"{posterior.log_likelihood[0]:.1f} nats"
        + (f"; held-out median {usual['median']:.1f}):" if usual else "):")
    ]
    pairs = zip(posterior.classes[0][:top], posterior.probabilities[0][:top], strict=True)
    for classes, p in pairs:
        if p > 0:
            values = ", ".join(
                f"{n}={value_text(n, int(c))}" for n, c in zip(FACTORS, classes, strict=True)
            )
            lines.append(f"- {p:.3f}: {values}")
    if not posterior.complete[0]:
        lines.append(
            "- *The search stopped on its budget: no tuple it scored explains this image well, "
            "and better ones may exist.*"
        )
    return "\n".join(lines)


def distribution_text(classes: np.ndarray, probabilities: np.ndarray, method: str) -> str:
    """Markdown lines: a counterfactual that the image does not pin down, as its most probable
    factor tuples (T, 5) with their probabilities (T,)."""
    lines = [
        f"**The counterfactual is a distribution** ({method}, {DISTRIBUTION_SAMPLES} noise "
        "draws); the image shows the answer for the most probable factual factors:"
    ]
    for row, p in list(zip(classes, probabilities, strict=True))[:5]:
        values = ", ".join(
            f"{n}={value_text(n, int(c))}" for n, c in zip(FACTORS, row, strict=True)
        )
        lines.append(f"- {p:.3f}: {values}")
    return "\n".join(lines)


def factor_table(factual: np.ndarray, counterfactual: np.ndarray, given: bool) -> str:
    """A Markdown table of the factual and counterfactual classes (5,) of one query."""
    source = "given" if given else "posterior mode"
    lines = [f"| factor | factual ({source}) | counterfactual |", "| --- | --- | --- |"]
    for i, name in enumerate(FACTORS):
        before, after = int(factual[i]), int(counterfactual[i])
        mark = " **(changed)**" if before != after else ""
        lines.append(f"| {name} | {value_text(name, before)} | {value_text(name, after)}{mark} |")
    return "\n".join(lines)
