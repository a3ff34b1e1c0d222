"""Evaluation: pure metric functions of arrays, and `evaluate(run)` that applies them.

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


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of equal entries."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    return float((predicted == truth).mean()) if truth.size else float("nan")


def probe_leakage(
    codes: np.ndarray, labels: np.ndarray, num_steps: int = 300, seed: int = 0
) -> dict[str, float]:
    """How well a linear probe predicts each factor from codes (N, d), on a held-out half.

    Returns, per factor, (accuracy - majority rate) / (1 - majority rate): 0 when z tells nothing
    about the factor beyond chance, 1 when it gives it away.
    """
    with single_thread():
        return _probe_leakage(codes, labels, num_steps, seed)


def _probe_leakage(
    codes: np.ndarray, labels: np.ndarray, num_steps: int, seed: int
) -> dict[str, float]:
    codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
    codes_t = (codes_t - codes_t.mean(0)) / (codes_t.std(0) + 1e-6)
    order = np.random.default_rng(seed).permutation(len(codes_t))
    half = len(order) // 2
    fit_rows, test_rows = order[:half], order[half:]
    generator = torch.Generator().manual_seed(seed)
    leakage = {}
    for i, (name, size) in enumerate(zip(FACTORS, SIZES, strict=True)):
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


# --- counterfactual soundness (Monteiro et al. 2023) and ground truth ---------------------------

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


def readout_accuracy(
    predicted: np.ndarray, truth: np.ndarray, images: np.ndarray
) -> dict[str, Any]:
    """How well factors (B, 5) read off images (B, 64, 64) match the true ones (B, 5): `exact`
    and `image_equivalent` accuracy per factor (the predicted value, swapped into the true
    tuple, draws the same dSprites image: IoU >= 0.98), `all_image_equivalent` (the whole
    predicted tuple draws it) and `heart_orientation_exact` (0 and 2 pi counted as one)."""
    from causal_sprites.data.render import render

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


def evaluate(
    run: Any, data: Any, num_images: int = 4096, seed: int = 0, num_posterior_images: int = 512
) -> dict[str, Any]:
    """Test-set metrics of a run: NELBO (recon, KL), reconstruction IoU and pixel error,
    classifier accuracy per factor and z-leakage, on up to `num_images` held-out images; on the
    first `num_posterior_images` of them, factors read off the pixels by the classifier's argmax
    and by the posterior's mode (`readout`, see `readout_accuracy`)."""
    from causal_sprites.train import evaluate_nelbo, split_rows

    model, config = run.model, run.config
    _, test_rows = split_rows(data, config)
    rows = np.sort(np.random.default_rng(seed).permutation(test_rows)[:num_images])
    device = next(model.parameters()).device
    packed = torch.from_numpy(data.packed).to(device)
    labels = torch.from_numpy(data.classes(slice(None))[:, 1:]).to(device)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        scores = evaluate_nelbo(model, packed, labels, rows)
        images, classes = data.images(rows), data.classes(rows)[:, 1:]
        recon, codes = run.reconstruct_with_codes(images, classes)
        scores.update(
            num_test_images=len(rows),
            recon_iou=summarize(iou(recon, images)),
            recon_pixel_error=summarize(pixel_error(recon, images)),
            z_leakage=probe_leakage(codes, classes, seed=seed),
        )
        chosen = slice(0, num_posterior_images)
        with torch.no_grad():
            logits = model.classify(torch.as_tensor(images[chosen]).float()[:, None].to(device))
        argmax = torch.stack([lg.argmax(-1) for lg in logits], -1).cpu().numpy()
        scores["readout"] = {
            "num_images": len(argmax),
            "classifier": readout_accuracy(argmax, classes[chosen], images[chosen]),
            "posterior": readout_accuracy(
                run.infer_labels(images[chosen]), classes[chosen], images[chosen]
            ),
        }
        return scores


HEART, ORIENTATION = 2, FACTORS.index("orientation")


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


def _true_counterfactual(
    data: Any,
    variant: Any,
    rows: np.ndarray,
    factual: np.ndarray,
    do: Mapping[str, np.ndarray],
    abducted: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """True counterfactual classes (B, 5) and images (B, 64, 64) of data rows under do({name:
    values (B,)}): on a variant from its recorded noise, on dSprites the image at the same other
    factors (drawn by the generator, which is the default data). With `abducted`, a variant's noise
    is instead drawn from its posterior given the classes: a perfect model's answer."""
    from causal_sprites.data.render import render

    ((name, values),) = do.items()
    if variant is None:
        classes = factual.copy()
        classes[:, FACTORS.index(name)] = values
        return classes, render(classes)
    from causal_sprites.data.variants import abduct_noise, true_counterfactual

    spec, recorded = variant
    noise = abduct_noise(spec, factual) if abducted else {k: v[rows] for k, v in recorded.items()}
    classes = np.empty_like(factual)
    images = np.empty((len(rows), 64, 64), np.uint8)
    for value in np.unique(values):
        chosen = values == value
        row_noise = {k: v[chosen] for k, v in noise.items()}
        classes[chosen], images[chosen] = true_counterfactual(
            spec, row_noise, factual[chosen], {name: int(value)}
        )
    return classes, images


def _ceiling_scores(
    data: Any,
    variant: Any,
    rows: np.ndarray,
    factual: tuple[np.ndarray, np.ndarray],
    do: Mapping[str, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    """What a perfect model (the truth's own tables, exact abduction from the factual classes)
    scores on these queries, whose factual and true (classes, images) are given: the ceiling that
    the observation allows. On dSprites, and for a factor without descendants, it is 1: the
    counterfactual is identified."""
    true_classes, true_images = truth
    factual_classes, factual_images = factual
    classes, perfect = _true_counterfactual(data, variant, rows, factual_classes, do, abducted=True)
    undo = {name: factual_classes[:, FACTORS.index(name)] for name in do}
    _, back = _true_counterfactual(data, variant, rows, classes, undo, abducted=True)
    return {
        "ground_truth_iou_ceiling": summarize(iou(perfect, true_images)),
        "counterfactual_classes_correct_ceiling": accuracy(classes, true_classes),
        "reversibility_iou_ceiling": reversibility(factual_images, back),
    }


#: Composition (a null intervention returns the input) holds by construction under exact
#: abduction: reported as a check that abduction is not broken, not as a measured property.
COMPOSITION_NOTE: Final = (
    "exact by construction (exact abduction); below 1 means abduction is broken"
)


def evaluate_counterfactuals(
    model: Any,
    data: Any,
    oracle: Any,
    variant: Any = None,
    num_images: int = 128,
    seed: int = 0,
    num_noise_samples: int = 2000,
) -> dict[str, Any]:
    """Counterfactual soundness (Monteiro et al. 2023) plus dSprites' ground truth, per
    intervened factor and overall, on held-out images each sent to a random other value.

    `variant` is (spec, recorded noise) when the data is a causal variant, else None. On a variant
    an intervention on a factor with descendants is not identified from the image: the recorded
    noise of a stochastic descendant is known only in distribution, so no model can match the
    recorded truth every time. Each score therefore comes with its `_ceiling` (what a perfect model
    with the true tables and exact abduction scores on the same queries), and the `_identified`
    summaries pool only the factors without descendants (`identified_factors`), where it is 1.
    What a perfect model does get right there is the distribution of the counterfactual factors:
    `counterfactual_tv` compares the model's (its tables, `num_noise_samples` draws of the
    abducted noise, the true factual classes) with the truth's, beside `counterfactual_tv_floor`,
    the true tables' own TV at the same budget. Preservation is judged against the true graph on
    a variant (the model's own graph only on plain dSprites, where it is empty by construction
    unless the user gave one): `preservation_graph` says which.
    """
    from causal_sprites.train import split_rows

    _, test_rows = split_rows(data, model.config)
    rng = np.random.default_rng(seed)
    edges = list(variant[0].edges if variant is not None else model.config.graph)
    model_graph = model.factor_graph
    true_graph = (
        FactorGraph.from_tables(variant[0].parents, variant[0].tables)
        if variant is not None
        else FactorGraph.from_tables(
            {}, {n: np.ones(k) / k for n, k in zip(FACTORS, SIZES, strict=True)}
        )
    )
    per_factor: dict[str, dict[str, Any]] = {}
    for name, size in zip(FACTORS, SIZES, strict=True):
        column = FACTORS.index(name)
        rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
        images, factual = data.images(rows), data.classes(rows)[:, 1:]
        values = (factual[:, column] + rng.integers(1, size, len(rows))) % size
        result = model.counterfactual_query(images, factual, do={name: values}, seed=seed)
        truth = _true_counterfactual(data, variant, rows, factual, {name: values})
        true_classes, true_images = truth
        predicted = oracle.predict(result.images)
        intervened = np.zeros_like(factual, dtype=bool)
        intervened[:, column] = True
        asked = factual.copy()
        asked[:, column] = values  # the oracle must read the value asked for, not the one claimed
        back = model.counterfactual_query(
            result.images, result.counterfactual, do={name: factual[:, column]}, seed=seed
        )
        scores = {
            "ground_truth_iou": summarize(iou(result.images, true_images)),
            "ground_truth_pixel_error": summarize(pixel_error(result.images, true_images)),
            "counterfactual_classes_correct": accuracy(result.counterfactual, true_classes),
            "effectiveness": effectiveness(predicted, asked, intervened)["overall"],
            "preservation": preservation(predicted, factual, preserved_mask(intervened, edges))[
                "overall"
            ],
            "reversibility_iou": reversibility(images, back.images),
            "identified": variant is None or not variant[0].descendants([name]),
            **dict(
                zip(
                    ("counterfactual_tv", "counterfactual_tv_floor"),
                    counterfactual_tv(
                        model_graph, true_graph, factual, {name: values}, num_noise_samples, seed
                    ),
                    strict=True,
                )
            ),
            **_ceiling_scores(data, variant, rows, (factual, images), {name: values}, truth),
        }
        per_factor[name] = scores
    rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
    images, factual = data.images(rows), data.classes(rows)[:, 1:]
    repeated, current = [], images
    for _ in range(10):
        current = model.counterfactual(current, factual, do={}, seed=seed)
        repeated.append(current)
    composed = composition(images, repeated)

    def pooled(key: str, identified_only: bool = False) -> float:
        chosen = [f[key] for f in per_factor.values() if f["identified"] or not identified_only]
        return float(np.nanmean(chosen)) if chosen else float("nan")

    return {
        "ground_truth_iou": pooled("ground_truth_iou"),
        "ground_truth_iou_ceiling": pooled("ground_truth_iou_ceiling"),
        "ground_truth_iou_identified": pooled("ground_truth_iou", identified_only=True),
        "effectiveness": pooled("effectiveness"),
        "preservation": pooled("preservation"),
        "composition_iou_1": float(composed[0]),
        "composition_iou_10": float(composed[9]),
        "composition_note": COMPOSITION_NOTE,
        "preservation_graph": "true" if variant is not None else "model",
        "counterfactual_tv": pooled("counterfactual_tv"),
        "counterfactual_tv_floor": pooled("counterfactual_tv_floor"),
        "num_noise_samples": num_noise_samples,
        "reversibility_iou": pooled("reversibility_iou"),
        "reversibility_iou_ceiling": pooled("reversibility_iou_ceiling"),
        "reversibility_iou_identified": pooled("reversibility_iou", identified_only=True),
        "identified_factors": [n for n, s in per_factor.items() if s["identified"]],
        "per_factor": per_factor,
        "num_images_per_factor": len(rows),
    }


# --- distributions: what conditioning and intervening do, against the truth ---------------------


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


#: The pair of factors evaluated on plain dSprites, which has no edges: an example, whose truth is
#: the data's (uniform) distribution whether one conditions or intervenes.
DSPRITES_EXAMPLE_EDGES: Final = (("shape", "scale"),)


def _query_scores(
    result: Any, predicted: np.ndarray, target: str, truth: np.ndarray, seed: int
) -> dict[str, Any]:
    """One query's TVs against its truth: the SCM's exact marginal (`tv_scm`), the oracle's
    reading of the generated images (`tv_oracle`), the classes the SCM drew for those images
    (`tv_drawn`, sampling noise only), the oracle's reading against those classes
    (`tv_oracle_vs_drawn`, image errors only) and the sampling floor for this many images."""
    column = FACTORS.index(target)
    size = SIZES[column]
    drawn = np.asarray(result.classes)[:, column]
    read = np.asarray(predicted)[:, column]
    read_dist = label_distribution(read, size)
    return {
        "tv_scm": total_variation(result.marginals[target], truth),
        "tv_oracle": total_variation(read_dist, truth),
        "tv_drawn": total_variation(label_distribution(drawn, size), truth),
        "tv_oracle_vs_drawn": total_variation(read_dist, label_distribution(drawn, size)),
        "oracle_agreement": accuracy(read, drawn),
        "sampling_floor": sampling_floor(truth, len(read), seed=seed),
        "seconds": float(result.seconds),
    }


def evaluate_distributions(
    model: Any,
    oracle: Any,
    spec: Any = None,
    data: Any = None,
    num_samples: int = 2000,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    values: Mapping[str, int | str] | None = None,
    seed: int = 0,
    return_distributions: bool = False,
) -> dict[str, Any]:
    """The model's P(target | do(set = v)) and P(target | set = v) against the truth, as total
    variation distance, estimated (a) from `num_samples` generated images read by the oracle and
    (b) from the SCM directly (the exact marginals of `intervene_query` / `condition_query`).

    `spec` is the truth's VariantSpec (exact distributions from `variants.distribution`); None is
    plain dSprites, whose factors are independent: the truth is then the empirical distribution of
    `data`'s labels (P(target) under do, P(target | set = v) when conditioning), or uniform
    without data. By default every edge parent -> child of the truth (on dSprites the example
    shape -> scale) is asked both ways: P(child | parent = v) (`direction` "child_given_parent",
    where do and conditioning agree when the parent has no confounder) and P(parent | child = v)
    ("parent_given_child", where they differ: intervening on an effect leaves its cause alone).
    `pairs` [(set, target)] replaces them; `values` {factor: value} picks v (default: the last
    class of the set factor).

    Returns `entries`, one per query: `edge`, `direction`, `set`, `target`, `value`, then
    `intervention` and `condition`, each with `tv_scm`, `tv_oracle`, `tv_drawn`,
    `tv_oracle_vs_drawn`, `oracle_agreement`, `sampling_floor` and `seconds`, plus
    `truth_tv_do_vs_condition` and `scm_tv_do_vs_condition`; and the maxima over entries
    `tv_intervention`, `tv_condition` (SCM), `tv_intervention_oracle`, `tv_condition_oracle`,
    `sampling_floor` (the largest TV a perfect model would show from sampling alone), with
    `num_samples`. With `return_distributions` each entry also carries the distributions.
    """
    from causal_sprites.data.factors import normalize_assignments

    if num_samples < 1:
        raise CausalSpritesError(f"num_samples must be >= 1, got {num_samples}")
    edges = tuple(spec.edges) if spec is not None else DSPRITES_EXAMPLE_EDGES
    queries: list[tuple[str, str, str | None, str | None]]
    if pairs is None:
        queries = [(p, c, f"{p}->{c}", "child_given_parent") for p, c in edges]
        queries += [(c, p, f"{p}->{c}", "parent_given_child") for p, c in edges]
    else:
        queries = [(s, t, None, None) for s, t in pairs]
    chosen = normalize_assignments(values or {})
    labels = None if data is None or spec is not None else data.factors(slice(None))
    entries: list[dict[str, Any]] = []
    for index, (setter, target, edge, direction) in enumerate(queries):
        if setter == target or setter not in FACTORS or target not in FACTORS:
            raise CausalSpritesError(f"bad pair {setter} -> {target}: two distinct factors needed")
        value = chosen.get(setter, SIZES[FACTORS.index(setter)] - 1)
        size = SIZES[FACTORS.index(target)]
        if spec is not None:
            from causal_sprites.data.variants import distribution

            truth_do = distribution(spec, target, do={setter: value})
            truth_condition = distribution(spec, target, given={setter: value})
        elif labels is not None:
            truth_do = empirical_conditional(labels, target)
            truth_condition = empirical_conditional(labels, target, {setter: value})
        else:
            truth_do = truth_condition = np.full(size, 1.0 / size)
        query_seed = seed + 2 * index
        done = model.intervene_query({setter: value}, num_samples, seed=query_seed)
        seen = model.condition_query({setter: value}, num_samples, seed=query_seed + 1)
        read_do, read_condition = oracle.predict(done.images), oracle.predict(seen.images)
        entry: dict[str, Any] = {
            "edge": edge,
            "direction": direction,
            "set": setter,
            "target": target,
            "value": int(value),
            "intervention": _query_scores(done, read_do, target, truth_do, query_seed),
            "condition": _query_scores(
                seen, read_condition, target, truth_condition, query_seed + 1
            ),
            "truth_tv_do_vs_condition": total_variation(truth_do, truth_condition),
            "scm_tv_do_vs_condition": total_variation(
                done.marginals[target], seen.marginals[target]
            ),
        }
        if return_distributions:
            entry["distributions"] = {
                "truth_do": np.asarray(truth_do).tolist(),
                "truth_condition": np.asarray(truth_condition).tolist(),
                "scm_do": np.asarray(done.marginals[target]).tolist(),
                "scm_condition": np.asarray(seen.marginals[target]).tolist(),
                "oracle_do": label_distribution(read_do[:, FACTORS.index(target)], size).tolist(),
                "oracle_condition": label_distribution(
                    read_condition[:, FACTORS.index(target)], size
                ).tolist(),
            }
        entries.append(entry)

    def largest(mode: str, key: str) -> float:
        return max((e[mode][key] for e in entries), default=float("nan"))

    return {
        "tv_intervention": largest("intervention", "tv_scm"),
        "tv_condition": largest("condition", "tv_scm"),
        "tv_intervention_oracle": largest("intervention", "tv_oracle"),
        "tv_condition_oracle": largest("condition", "tv_oracle"),
        "sampling_floor": max(
            (e[m]["sampling_floor"] for e in entries for m in ("intervention", "condition")),
            default=float("nan"),
        ),
        "num_samples": num_samples,
        "truth": "variant" if spec is not None else ("data" if labels is not None else "uniform"),
        "entries": entries,
    }
