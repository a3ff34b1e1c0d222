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

from causal_sprites.data.factors import FACTORS, SIZES, classes_to_index
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
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
    sizes: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """How well a linear probe predicts each factor (`sizes`: {factor: classes} in column order,
    default dSprites') from codes (N, d), on a held-out half.

    Returns, per factor, (accuracy - majority rate) / (1 - majority rate): 0 when z tells nothing
    about the factor beyond chance, 1 when it gives it away.
    """
    sizes = sizes or dict(zip(FACTORS, SIZES, strict=True))
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


#: Classes a read-back factor may be off by and still count: exact for shape and scale, one class
#: for orientation and position (neighbouring classes differ by about a pixel).
TOLERANCE: Final[dict[str, int]] = {"shape": 0, "scale": 0, "orientation": 1, "posX": 1, "posY": 1}


#: Rotational symmetry of square, ellipse and heart: orientations a quarter, a half, a full turn
#: apart draw the same image.
SYMMETRY_FOLD: Final = (4, 2, 1)


#: Distinct orientation angles: class k is 2 pi k / 39, so classes 0 and 39 are the same angle.
_NUM_ANGLES: Final = SIZES[FACTORS.index("orientation")] - 1


def class_distance(
    factor: str, a: np.ndarray, b: np.ndarray, shapes: np.ndarray | None = None
) -> np.ndarray:
    """Distance in classes between class arrays (B,) of one factor. Orientation is circular and,
    given the shapes (B,), taken modulo each shape's rotational symmetry (then fractional)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    if factor != "orientation":
        return diff
    period = np.full(diff.shape, float(_NUM_ANGLES))
    if shapes is not None:
        period = period / np.asarray(SYMMETRY_FOLD)[np.asarray(shapes)]
    diff = np.mod(diff, period)
    return np.minimum(diff, period - diff)


def factor_matches(
    predicted: np.ndarray,
    target: np.ndarray,
    tolerance: Mapping[str, int] | None = None,
    symmetric: bool = False,
) -> np.ndarray:
    """(B, 5) bool: each predicted class is within `tolerance[factor]` classes (default 0) of the
    target's; with `symmetric`, orientation counts modulo the target shape's symmetry."""
    predicted, target = np.asarray(predicted), np.asarray(target)
    shapes = target[:, FACTORS.index("shape")] if symmetric else None
    tolerance = tolerance or {}
    return np.stack(
        [
            class_distance(name, predicted[:, i], target[:, i], shapes)
            <= tolerance.get(name, 0) + 0.5
            for i, name in enumerate(FACTORS)
        ],
        axis=-1,
    )


def _match_rates(
    predicted: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    tolerance: Mapping[str, int] | None,
    symmetric: bool,
) -> dict[str, float]:
    """Fraction of masked entries (B, 5) that match, per factor (factors never masked left out)
    and `overall` (nan when nothing is masked)."""
    mask = np.asarray(mask, dtype=bool)
    matches = factor_matches(predicted, target, tolerance, symmetric) & mask
    rates = {
        name: float(matches[:, i].sum() / mask[:, i].sum())
        for i, name in enumerate(FACTORS)
        if mask[:, i].any()
    }
    rates["overall"] = float(matches.sum() / mask.sum()) if mask.any() else float("nan")
    return rates


def effectiveness(
    predicted: np.ndarray,
    intended: np.ndarray,
    intervened: np.ndarray,
    tolerance: Mapping[str, int] | None = TOLERANCE,
    symmetric: bool = False,
) -> dict[str, float]:
    """How often the oracle reads the intervened factors back as intended: oracle predictions on the
    counterfactuals (B, 5), intended classes (B, 5), intervened mask (B, 5) bool. Per factor and
    `overall`; `tolerance=None` asks for exact classes."""
    return _match_rates(predicted, intended, intervened, tolerance, symmetric)


def preservation(
    predicted: np.ndarray,
    factual: np.ndarray,
    preserved: np.ndarray,
    tolerance: Mapping[str, int] | None = TOLERANCE,
    symmetric: bool = False,
) -> dict[str, float]:
    """How often the oracle sees the factors that should not change unchanged: oracle predictions on
    the counterfactuals (B, 5), factual classes (B, 5), mask (B, 5) bool of factors neither
    intervened on nor descending from one (see `preserved_mask`). Per factor and `overall`."""
    return _match_rates(predicted, factual, preserved, tolerance, symmetric)


def preserved_mask(intervened: np.ndarray, edges: Iterable[tuple[str, str]]) -> np.ndarray:
    """(B, 5) bool: the factors neither intervened on (mask (B, 5)) nor descending from one."""
    reach = np.eye(len(FACTORS), dtype=bool)
    for parent, child in edges:
        reach[FACTORS.index(parent), FACTORS.index(child)] = True
    for _ in FACTORS:  # transitive closure by repeated squaring of a 5-node graph
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


def oracle_accuracy(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy of predicted classes (B, 5) against the truth: exact per factor, within one class
    for orientation and position, and orientation modulo each shape's rotational symmetry."""
    exact = factor_matches(predicted, truth)
    near = factor_matches(predicted, truth, TOLERANCE)
    symmetric = factor_matches(predicted, truth, None, symmetric=True)
    symmetric_near = factor_matches(predicted, truth, TOLERANCE, symmetric=True)
    scores = {name: float(exact[:, i].mean()) for i, name in enumerate(FACTORS)}
    for i, name in enumerate(FACTORS):
        if TOLERANCE[name]:
            scores[f"{name}_within_1"] = float(near[:, i].mean())
    o = FACTORS.index("orientation")
    scores["orientation_mod_symmetry"] = float(symmetric[:, o].mean())
    scores["orientation_mod_symmetry_within_1"] = float(symmetric_near[:, o].mean())
    return scores


HEART, ORIENTATION = 2, FACTORS.index("orientation")


def readout_accuracy(
    predicted: np.ndarray, truth: np.ndarray, images: np.ndarray
) -> dict[str, Any]:
    """How well factors (B, 5) read off images (B, 64, 64) match the true ones (B, 5): `exact`
    and `image_equivalent` accuracy per factor (the predicted value, swapped into the true
    tuple, draws the same dSprites image: IoU >= 0.98), `all_image_equivalent` (the whole
    predicted tuple draws it) and `heart_orientation_exact` (0 and 2 pi counted as one)."""

    def draw(classes: np.ndarray) -> np.ndarray:
        return render(np.concatenate([np.zeros((len(classes), 1), np.int64), classes], 1))

    exact, equivalent = {}, {}
    for i, name in enumerate(FACTORS):
        swapped = truth.copy()
        swapped[:, i] = predicted[:, i]
        exact[name] = float((predicted[:, i] == truth[:, i]).mean())
        equivalent[name] = float((iou(draw(swapped), images) >= 0.98).mean())
    hearts = truth[:, 0] == HEART
    last = SIZES[ORIENTATION] - 1
    turns = [
        np.where(t[hearts, ORIENTATION] == last, 0, t[hearts, ORIENTATION])
        for t in (predicted, truth)
    ]
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
    """Total variation (B,) between two samples (S, B, 5) and (S', B, 5) of factor tuples, image by
    image: half the summed absolute difference of their empirical tuple frequencies."""
    first, second = np.asarray(first), np.asarray(second)
    out = np.zeros(first.shape[1])
    for b in range(first.shape[1]):
        keys_a, counts_a = np.unique(classes_to_index(first[:, b]), return_counts=True)
        keys_b, counts_b = np.unique(classes_to_index(second[:, b]), return_counts=True)
        keys = np.union1d(keys_a, keys_b)
        p = np.zeros(len(keys))
        q = np.zeros(len(keys))
        p[np.searchsorted(keys, keys_a)] = counts_a / counts_a.sum()
        q[np.searchsorted(keys, keys_b)] = counts_b / counts_b.sum()
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
    labels: np.ndarray, target: str, given: Mapping[str, int] | None = None
) -> np.ndarray:
    """Empirical P(target | given) (K,) from factor classes (N, 5) (or (N, 6) with color): the
    target's label distribution among the rows that match every given {factor: class}; rows
    repeated alike leave it unchanged. No matching row is refused."""
    labels = np.asarray(labels)[:, -len(FACTORS) :]
    rows = np.ones(len(labels), dtype=bool)
    for name, value in (given or {}).items():
        rows &= labels[:, FACTORS.index(name)] == value
    if not rows.any():
        raise CausalSpritesError(f"no rows with {given}: the conditional is undefined")
    column = FACTORS.index(target)
    return label_distribution(labels[rows, column], SIZES[column])


def sampling_floor(p: np.ndarray, num_samples: int, repeats: int = 200, seed: int = 0) -> float:
    """Mean total variation between a distribution (K,) and the empirical distribution of
    `num_samples` draws from it: what a sample-based TV scores even for a perfect model."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    counts = np.random.default_rng(seed).multinomial(num_samples, p, size=repeats)
    return float(np.mean([total_variation(c, p) for c in counts]))
