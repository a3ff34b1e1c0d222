"""Metrics: pure functions of arrays (images, factor classes, samples); `evaluation.py` applies
them to a run.

z-leakage follows the probing idea of disentanglement_lib (a small classifier predicts each factor
from the latent code); for a conditional VAE low is good, the factors belong in y. Counterfactual
soundness (effectiveness, composition, reversibility, with preservation and ground-truth fidelity)
follows Monteiro et al. 2023, "Measuring axiomatic soundness of counterfactual image models".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from causal_sprites.data.render import render
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.search import SearchSpace
from causal_sprites.runtime import single_thread
from causal_sprites.scm.graph import FactorGraph


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of binary images (B, 64, 64) -> (B,); two empty images score 1."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def pixel_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of differing pixels per image pair (B, 64, 64) -> (B,)."""
    return (np.asarray(a).astype(bool) != np.asarray(b).astype(bool)).sum(axis=(-2, -1))


#: PSNR (dB) of an image equal to its reference (MSE 0), so that a per-image mean stays finite.
PSNR_CAP: Final = 100.0


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference per image pair (B, ...) -> (B,), in the images' own units (the
    0-255 scale for 8-bit images)."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return diff.reshape(len(diff), -1).mean(1)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio (B,) in dB of image pairs (B, ...), capped at PSNR_CAP."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = (diff**2).reshape(len(diff), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(peak**2 / mse), PSNR_CAP)


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of equal entries."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    return float((predicted == truth).mean()) if truth.size else float("nan")


def probe_leakage(
    codes: np.ndarray,
    labels: np.ndarray,
    num_steps: int = 300,
    seed: int = 0,
    *,
    sizes: Mapping[str, int],
) -> dict[str, float]:
    """How well a linear probe predicts each factor (`sizes`: {factor: classes} in column order)
    from codes (N, d), on a held-out half.

    Returns, per factor, (accuracy - majority rate) / (1 - majority rate): 0 when z tells nothing
    about the factor beyond chance, 1 when it gives it away.
    """
    with single_thread():
        return _probe_leakage(codes, labels, num_steps, seed, sizes)


def _probe_leakage(
    codes: np.ndarray, labels: np.ndarray, num_steps: int, seed: int, sizes: Mapping[str, int]
) -> dict[str, float]:
    codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
    codes_t = (codes_t - codes_t.mean(0)) / (codes_t.std(0) + 1e-6)
    order = np.random.default_rng(seed).permutation(len(codes_t))
    half = len(order) // 2
    fit_rows, test_rows = order[:half], order[half:]
    generator = torch.Generator().manual_seed(seed)
    leakage = {}
    for i, (name, size) in enumerate(sizes.items()):
        target = torch.as_tensor(np.asarray(labels)[:, i], dtype=torch.long)
        weight = torch.zeros(codes_t.shape[1], size, requires_grad=True)
        bias = torch.zeros(size, requires_grad=True)
        torch.nn.init.normal_(weight, std=0.01, generator=generator)
        optimizer = torch.optim.Adam([weight, bias], lr=0.05)
        for _ in range(num_steps):
            loss = F.cross_entropy(codes_t[fit_rows] @ weight + bias, target[fit_rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = (codes_t[test_rows] @ weight + bias).argmax(-1)
        acc = float((predicted == target[test_rows]).float().mean())
        majority = float(np.bincount(target[test_rows].numpy(), minlength=size).max()) / len(
            test_rows
        )
        leakage[name] = max(0.0, (acc - majority) / max(1 - majority, 1e-9))
    return leakage


def summarize(values: Tensor | np.ndarray) -> float:
    """Mean of an array as a plain float."""
    return float(np.asarray(values, dtype=np.float64).mean())


#: The dSprites oracle's tolerance, by factor name: classes a read-back factor may be off by and
#: still count: exact for shape and scale, one class for orientation and position (neighbouring
#: classes differ by about a pixel). Factors it does not name are exact.
TOLERANCE: Final[dict[str, int]] = {"shape": 0, "scale": 0, "orientation": 1, "posX": 1, "posY": 1}


def period(factor: Factor) -> int:
    """Classes in a full turn of a cyclic factor: its K classes, or K - 1 where its first and
    last values are one angle (dSprites' orientation grid runs from 0 to 2 pi inclusive)."""
    values = factor.values
    turn = None if values is None else values[-1] - values[0]
    same = turn is not None and any(np.isclose(turn, full) for full in (2 * np.pi, 360.0))
    return factor.size - 1 if same else factor.size


def class_distance(factor: Factor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in classes between class arrays (B,) of one factor; around the circle (of
    `period` classes) for a cyclic one."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    if not factor.cyclic:
        return diff
    turn = period(factor)
    diff = np.mod(diff, turn)
    return np.minimum(diff, turn - diff)


def factor_matches(
    predicted: np.ndarray,
    target: np.ndarray,
    schema: Schema,
    tolerance: Mapping[str, int] | None = None,
    symmetric: bool = False,
) -> np.ndarray:
    """(B, K) bool: each predicted class is within `tolerance[factor]` classes (default 0) of the
    target's; with `symmetric`, also of any class the dataset knows draws the same image as the
    target tuple (its hints: a symmetric sprite's equivalent turns on dSprites)."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    tolerance = tolerance or {}
    limits = [tolerance.get(f.name, 0) + 0.5 for f in schema.factors]
    matches = np.stack(
        [
            class_distance(f, predicted[:, i], target[:, i]) <= limits[i]
            for i, f in enumerate(schema.factors)
        ],
        axis=-1,
    )
    if symmetric:  # the hints number the categorical columns alone
        equivalents = SearchSpace.of(schema).equivalents
        columns = [i for i, f in enumerate(schema.factors) if f.kind == "categorical"]
        for b, row in enumerate(target.tolist()):
            for j, classes in equivalents(tuple(int(row[i]) for i in columns)).items():
                i = columns[j]
                f, near = schema.factors[i], np.asarray(list(classes))
                distance = class_distance(f, np.full(len(near), predicted[b, i]), near)
                matches[b, i] |= bool(len(near)) and distance.min() <= limits[i]
    return matches


def _match_rates(
    predicted: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    schema: Schema,
    tolerance: Mapping[str, int] | None,
    symmetric: bool,
) -> dict[str, float]:
    """Fraction of masked entries (B, K) that match, per factor (factors never masked left out)
    and `overall` (nan when nothing is masked)."""
    mask = np.asarray(mask, dtype=bool)
    matches = factor_matches(predicted, target, schema, tolerance, symmetric) & mask
    rates = {
        name: float(matches[:, i].sum() / mask[:, i].sum())
        for i, name in enumerate(schema.names)
        if mask[:, i].any()
    }
    rates["overall"] = float(matches.sum() / mask.sum()) if mask.any() else float("nan")
    return rates


def effectiveness(
    predicted: np.ndarray,
    intended: np.ndarray,
    intervened: np.ndarray,
    schema: Schema,
    tolerance: Mapping[str, int] | None = TOLERANCE,
    symmetric: bool = False,
) -> dict[str, float]:
    """How often the oracle reads the intervened factors back as intended: oracle predictions on the
    counterfactuals (B, K), intended classes (B, K), intervened mask (B, K) bool, factors of
    `schema`. Per factor and `overall`; `tolerance=None` asks for exact classes."""
    return _match_rates(predicted, intended, intervened, schema, tolerance, symmetric)


def preservation(
    predicted: np.ndarray,
    factual: np.ndarray,
    preserved: np.ndarray,
    schema: Schema,
    tolerance: Mapping[str, int] | None = TOLERANCE,
    symmetric: bool = False,
) -> dict[str, float]:
    """How often the oracle sees the factors that should not change unchanged: oracle predictions on
    the counterfactuals (B, K), factual classes (B, K), mask (B, K) bool of factors neither
    intervened on nor descending from one (see `preserved_mask`). Per factor and `overall`."""
    return _match_rates(predicted, factual, preserved, schema, tolerance, symmetric)


def preserved_mask(
    intervened: np.ndarray, edges: Iterable[tuple[str, str]], names: Sequence[str]
) -> np.ndarray:
    """(B, K) bool: the factors `names` neither intervened on (mask (B, K)) nor descending from
    one along the (parent, child) `edges`."""
    names = list(names)
    reach = np.eye(len(names), dtype=bool)
    for parent, child in edges:
        reach[names.index(parent), names.index(child)] = True
    for _ in names:  # transitive closure by repeated squaring
        reach = (reach.astype(int) @ reach.astype(int)) > 0
    intervened = np.asarray(intervened, dtype=bool)
    return ~((intervened.astype(int) @ reach.astype(int)) > 0)


def ground_truth_fidelity(counterfactuals: np.ndarray, truths: np.ndarray) -> dict[str, float]:
    """Mean IoU and mean pixel error of counterfactual images (B, 64, 64) against the true ones."""
    return {
        "iou": summarize(iou(counterfactuals, truths)),
        "pixel_error": summarize(pixel_error(counterfactuals, truths)),
    }


def composition(images: np.ndarray, repeated: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Mean IoU (T,) against the inputs (B, 64, 64) of the null intervention applied 1..T times:
    `repeated` (T, B, 64, 64), entry t after t + 1 applications. Perfect composition is all ones."""
    return np.array([summarize(iou(after, images)) for after in repeated])


def reversibility(images: np.ndarray, returned: np.ndarray) -> float:
    """Mean IoU of the inputs (B, 64, 64) with do(a -> b) then do(b -> a) applied to them."""
    return summarize(iou(returned, images))


def label_distribution(labels: np.ndarray, size: int) -> np.ndarray:
    """Empirical distribution (K,) of class labels (N,) over `size` classes."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return np.bincount(labels, minlength=size)[:size] / max(len(labels), 1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance 1/2 sum |p - q| of two distributions (K,) (normalised first)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def oracle_accuracy(predicted: np.ndarray, truth: np.ndarray, schema: Schema) -> dict[str, float]:
    """Accuracy of predicted classes (B, K) against the truth: exact per factor, within the
    `TOLERANCE` for the factors it gives one (`<name>_within_1`), and a cyclic factor's modulo the
    classes the dataset knows draw the same image (`<name>_mod_symmetry`: dSprites' orientation
    modulo each shape's rotational symmetry)."""
    exact = factor_matches(predicted, truth, schema)
    near = factor_matches(predicted, truth, schema, TOLERANCE)
    symmetric = factor_matches(predicted, truth, schema, None, symmetric=True)
    symmetric_near = factor_matches(predicted, truth, schema, TOLERANCE, symmetric=True)
    scores = {name: float(exact[:, i].mean()) for i, name in enumerate(schema.names)}
    for i, name in enumerate(schema.names):
        if TOLERANCE.get(name):
            scores[f"{name}_within_1"] = float(near[:, i].mean())
    for i, factor in enumerate(schema.factors):
        if factor.cyclic:
            scores[f"{factor.name}_mod_symmetry"] = float(symmetric[:, i].mean())
            scores[f"{factor.name}_mod_symmetry_within_1"] = float(symmetric_near[:, i].mean())
    return scores


def readout_accuracy(
    predicted: np.ndarray, truth: np.ndarray, images: np.ndarray, schema: Schema
) -> dict[str, Any]:
    """dSprites' readout: how well factors (B, 5) of `schema` (dSprites') read off images
    (B, 64, 64) match the true ones (B, 5): `exact` and `image_equivalent` accuracy per factor
    (the predicted value, swapped into the true tuple, draws the same dSprites image: IoU >=
    0.98), `all_image_equivalent` (the whole predicted tuple draws it) and
    `heart_orientation_exact` (0 and 2 pi counted as one)."""

    def draw(classes: np.ndarray) -> np.ndarray:
        return render(np.concatenate([np.zeros((len(classes), 1), np.int64), classes], 1))

    exact, equivalent = {}, {}
    for i, name in enumerate(schema.names):
        swapped = truth.copy()
        swapped[:, i] = predicted[:, i]
        exact[name] = float((predicted[:, i] == truth[:, i]).mean())
        equivalent[name] = float((iou(draw(swapped), images) >= 0.98).mean())
    shape, turn = schema.index("shape"), schema.index("orientation")
    hearts = truth[:, shape] == schema.parse_value("shape", "heart")
    last = schema.factors[turn].size - 1
    turns = [np.where(t[hearts, turn] == last, 0, t[hearts, turn]) for t in (predicted, truth)]
    return {
        "exact": exact,
        "image_equivalent": equivalent,
        "all_image_equivalent": float((iou(draw(predicted), images) >= 0.98).mean()),
        "heart_orientation_exact": float((turns[0] == turns[1]).mean())
        if hearts.any()
        else float("nan"),
    }


def exact_readout(predicted: np.ndarray, truth: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """How well factors (B, K) read off images match the true ones (B, K), on any dataset:
    `exact` accuracy per factor and `all_exact` (every factor of an image right)."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    return {
        "exact": {name: accuracy(predicted[:, i], truth[:, i]) for i, name in enumerate(names)},
        "all_exact": float((predicted == truth).all(1).mean()) if len(truth) else float("nan"),
    }


def combination_rows(factors: np.ndarray, sizes: Sequence[int]) -> np.ndarray | None:
    """The row (prod(sizes),) of each combination of factor classes (N, K), in
    `np.ravel_multi_index` order, when every combination is there exactly once; else None."""
    total = int(np.prod(sizes, dtype=np.float64))
    if len(factors) != total:
        return None
    keys = np.ravel_multi_index(np.asarray(factors, np.int64).T, tuple(sizes))
    if len(np.unique(keys)) != total:
        return None
    rows = np.empty(total, np.int64)
    rows[keys] = np.arange(total)
    return rows


def distribution_tv(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Total variation (B,) between two samples (S, B, K) and (S', B, K) of factor tuples, image by
    image: half the summed absolute difference of their empirical tuple frequencies."""
    first, second = np.asarray(first), np.asarray(second)
    out = np.zeros(first.shape[1])
    for b in range(first.shape[1]):
        both = np.concatenate([first[:, b], second[:, b]])
        keys = np.unique(both, axis=0, return_inverse=True)[1].reshape(-1)
        p = np.bincount(keys[: len(first)], minlength=keys.max() + 1) / len(first)
        q = np.bincount(keys[len(first) :], minlength=keys.max() + 1) / len(second)
        out[b] = 0.5 * np.abs(p - q).sum()
    return out


def counterfactual_tv(
    model_graph: FactorGraph,
    true_graph: FactorGraph,
    factual: np.ndarray,
    do: Mapping[str, np.ndarray],
    num_samples: int,
    seed: int,
) -> tuple[float, float]:
    """Mean TV between the model's and the truth's distributions of counterfactual factor tuples
    of factual classes (B, 5) under do {factor: (B,)}, and its floor: the same TV of the true
    graph itself drawn with the model's noise budget and seed (what a perfect model scores)."""
    classes = torch.as_tensor(factual)
    action = {name: torch.as_tensor(values) for name, values in do.items()}

    def draw(graph: FactorGraph, offset: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed + offset)
        return graph.counterfactuals(classes, action, num_samples, generator).numpy()

    truth = draw(true_graph, 0)
    tv = distribution_tv(draw(model_graph, 1), truth)
    floor = distribution_tv(draw(true_graph, 1), truth)
    return float(tv.mean()), float(floor.mean())


def empirical_conditional(
    labels: np.ndarray,
    target: str,
    given: Mapping[str, int] | None = None,
    *,
    sizes: Mapping[str, int],
) -> np.ndarray:
    """Empirical P(target | given) (K,) from factor classes (N, K) of the factors `sizes`
    {factor: classes} (or (N, K + 1) with dSprites' color first): the target's label
    distribution among the rows that match every given {factor: class}; rows repeated alike
    leave it unchanged. No matching row is refused."""
    names = list(sizes)
    labels = np.asarray(labels)[:, -len(names) :]
    rows = np.ones(len(labels), dtype=bool)
    for name, value in (given or {}).items():
        rows &= labels[:, names.index(name)] == value
    if not rows.any():
        raise CausalSpritesError(f"no rows with {given}: the conditional is undefined")
    return label_distribution(labels[rows, names.index(target)], sizes[target])


def sampling_floor(p: np.ndarray, num_samples: int, repeats: int = 200, seed: int = 0) -> float:
    """Mean total variation between a distribution (K,) and the empirical distribution of
    `num_samples` draws from it: what a sample-based TV scores even for a perfect model."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    counts = np.random.default_rng(seed).multinomial(num_samples, p, size=repeats)
    return float(np.mean([total_variation(c, p) for c in counts]))
