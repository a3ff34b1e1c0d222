"""Your own images, side by side with dSprites: a colour dataset of this benchmark's design (48x80
RGB discs and squares; hue, shape, size and horizontal position labelled; the grey background's
brightness an unlabelled nuisance for the style z), rendered exactly, so the true counterfactual
image of any (image, do) is known pixel for pixel; issue 20, item 7 and its "Done when".

Two sets: the independent one (every factor combination the same number of times) and a variant
with edges (hue -> size <- shape, size -> posx: Gumbel-max mechanisms whose noise is recorded, so
the true counterfactual of descendants is known too). The `images` preset trains on each for
--minutes CPU-minutes with one torch thread; held-out images (fresh draws of the same generator)
give the NELBO (nats per image, bits per dimension), the reconstruction's mean absolute pixel
error (0-255), the readout's accuracy per factor from the pixels (the posterior's mode), the
counterfactual's per-image error and PSNR against the true image for do() on each factor beside
the model's own reconstruction of that true image (and beside the same answers with each pixel's
noise drawn rather than at its median), and discovery's SHD from labels and from
pixels. On the variant, the noise of descendants is not in the image, so the pixel targets are
held on the counterfactuals whose classes match the truth's ("identified"; the agreement is given
beside a perfect model's ceiling). Diagnostics say why a target is missed: the error of answering
with the input unchanged (a counterfactual that changed nothing scores that), what each
counterfactual image shows (the nearest exact render, against the classes the model says it
drew), the decoder's logistic on the object's pixels and the background's, and what z holds (a
nearest-neighbour vote for each factor; the brightness's R^2). The shipped pretrained dSprites
model is scored with the same metrics on held-out dSprites images (binary pixels as 0 or 255).

Then the big set: 480,000 64x64x3 images in 3dshapes' .h5 layout (cheap procedural renders,
every combination of its 10, 10, 10, 8, 4, 15 classes once, about 5.9 GB), imported with
`causal-sprites data import` and trained on for --big-steps steps, each a subprocess whose peak
resident set `/usr/bin/time -v` reports; the files are deleted at the end.

Run `.venv/bin/python bench/own_data.py [--minutes 10] [--skip-big] [--out PATH]`; prints a
markdown table and writes bench/results/own-data.json (or --out).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.discovery import discover, discover_from_images
from causal_sprites.metrics import readout_accuracy
from causal_sprites.model.pixels import bits_per_dim
from causal_sprites.runs import read_metrics, resolve_run
from causal_sprites.scm.mechanisms import gumbel_posterior
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import evaluate_nelbo, fit, split_rows, training_images, training_labels

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLI = [str(Path(sys.executable).with_name("causal-sprites"))]

# --- the colour dataset ------------------------------------------------------------------------

HEIGHT, WIDTH = 48, 80
HUES = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 205, 35),
}
SHAPES = ("square", "disc")
SIZES = (10, 16, 22)  # side of the square, diameter of the disc
CENTRES = (12, 26, 40, 54, 68)  # the object's horizontal centre (its vertical one is the middle)
BRIGHTNESS = (40, 200)  # the grey background, uniform over these levels (inclusive)
SCHEMA = Schema(
    name="colour-shapes",
    factors=(
        categorical("hue", list(HUES)),
        categorical("shape", SHAPES),
        categorical("size", SIZES, SIZES, ordered=True),
        categorical("posx", CENTRES, CENTRES, ordered=True),
    ),
    image_shape=(HEIGHT, WIDTH, 3),
)
NAMES = SCHEMA.names
SIZES_K = tuple(f.size for f in SCHEMA.factors)
RGB = np.array(list(HUES.values()), dtype=np.uint8)


def _masks() -> np.ndarray:
    """The object's pixels (2, 3, 5, H, W) bool per shape, size and position."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5  # pixel centres
    out = np.zeros((len(SHAPES), len(SIZES), len(CENTRES), HEIGHT, WIDTH), dtype=bool)
    for (s, shape), (k, size), (p, centre) in itertools.product(
        enumerate(SHAPES), enumerate(SIZES), enumerate(CENTRES)
    ):
        dy, dx = rows - HEIGHT / 2, cols - centre
        if shape == "square":
            out[s, k, p] = (np.abs(dy) < size / 2) & (np.abs(dx) < size / 2)
        else:
            out[s, k, p] = dy**2 + dx**2 < (size / 2) ** 2
    return out


MASKS = _masks()


def render(classes: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """Images (B, 48, 80, 3) uint8 of factor classes (B, 4) on grey backgrounds (B,): exact,
    so the same classes and brightness always draw the same pixels."""
    classes = np.asarray(classes, dtype=np.int64)
    hue, shape, size, posx = classes.T
    mask = MASKS[shape, size, posx][..., None]  # (B, H, W, 1)
    grey = np.asarray(brightness, dtype=np.uint8)[:, None, None, None]
    return np.where(mask, RGB[hue][:, None, None, :], grey).astype(np.uint8)


#: The variant's graph: size depends on hue and shape (a collider), posx on size.
VARIANT_EDGES = (("hue", "size"), ("shape", "size"), ("size", "posx"))
PARENTS = {"hue": (), "shape": (), "size": ("hue", "shape"), "posx": ("size",)}


def _variant_tables() -> dict[str, np.ndarray]:
    """Each factor's table (*parent sizes, K): uniform roots; size prefers (hue + shape) mod 3
    (0.8 against 0.1 each); posx leans left for small sizes and right for large. Strong enough
    that PC on 4,000 true labels finds the truth's CPDAG (30 of 30 seeds; 29 of 30 with 2,000,
    where milder tables, 0.7 and a flatter posx, gave SHD 1 in 8 of 10)."""
    size = np.full((4, 2, 3), 0.1)
    for hue, shape in itertools.product(range(4), range(2)):
        size[hue, shape, (hue + shape) % 3] = 0.8
    posx = np.array(
        [[0.6, 0.25, 0.1, 0.03, 0.02], [0.05, 0.2, 0.5, 0.2, 0.05], [0.02, 0.03, 0.1, 0.25, 0.6]]
    )
    return {"hue": np.full(4, 0.25), "shape": np.full(2, 0.5), "size": size, "posx": posx}


TABLES = _variant_tables()


def _logits(name: str, classes: np.ndarray) -> np.ndarray:
    """log p(factor | parents) (B, K) of each row's parent classes (B, 4)."""
    table = np.log(TABLES[name])
    parents = [classes[:, NAMES.index(p)] for p in PARENTS[name]]
    if not parents:
        return np.tile(table, (len(classes), 1))
    return table[tuple(parents)]


def scm_classes(
    noise: dict[str, np.ndarray], do: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """The variant's factor classes (B, 4) from its Gumbel noise {factor: (B, K)}, under `do`
    (factor -> (B,) classes): the same noise with new mechanisms is the true counterfactual."""
    do = do or {}
    batch = len(next(iter(noise.values())))
    classes = np.zeros((batch, len(NAMES)), dtype=np.int64)
    for name in NAMES:  # already in topological order
        column = NAMES.index(name)
        if name in do:
            classes[:, column] = do[name]
        else:
            classes[:, column] = np.argmax(_logits(name, classes) + noise[name], axis=1)
    return classes


def independent_set(repeats: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every factor combination `repeats` times: classes (N, 4) and backgrounds (N,)."""
    classes = np.array(list(itertools.product(*map(range, SIZES_K))) * repeats)
    return classes, _brightness(len(classes), seed)


def independent_draws(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh held-out images' factors: each uniform and independent; classes (N, 4), grey (N,)."""
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.integers(0, k, num) for k in SIZES_K], axis=1)
    return classes, _brightness(num, seed + 1)


def variant_draws(num: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Samples of the variant: classes (N, 4), backgrounds (N,) and the recorded Gumbel noise."""
    rng = np.random.default_rng(seed)
    noise = {name: rng.gumbel(size=(num, k)) for name, k in zip(NAMES, SIZES_K, strict=True)}
    return scm_classes(noise), _brightness(num, seed + 1), noise


def _brightness(num: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(BRIGHTNESS[0], BRIGHTNESS[1] + 1, num)


# --- metrics -------------------------------------------------------------------------------------

#: PSNR of an image equal to its truth (MSE 0), so that a per-image mean stays finite.
PSNR_CAP = 100.0


def per_image_mae(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute pixel error (B,) on the 0-255 scale."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return diff.reshape(len(a), -1).mean(1)


def per_image_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR (B,) in dB, peak 255, capped at PSNR_CAP."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(255.0**2 / mse), PSNR_CAP)


def pixel_scores(
    images: np.ndarray, truth: np.ndarray, recon_of_truth: np.ndarray, factual: np.ndarray
) -> dict:
    """Counterfactual images against the true ones, beside the model's own reconstruction of the
    true image: per-image MAE and PSNR (means and spread) and the MAE ratio; `copy_mae` is the
    error of answering with the factual image unchanged (a counterfactual that changed nothing)
    and `change_mae` how far the counterfactual moved from it."""
    mae, psnr = per_image_mae(images, truth), per_image_psnr(images, truth)
    recon_mae = per_image_mae(recon_of_truth, truth)
    pooled_mse = float(((images.astype(np.float64) - truth) ** 2).mean()) if len(images) else 0.0
    return {
        "num_images": len(images),
        "mae": float(mae.mean()),
        "mae_p95": float(np.percentile(mae, 95)),
        "psnr": float(psnr.mean()),
        "psnr_p5": float(np.percentile(psnr, 5)),
        "psnr_pooled": float(10 * math.log10(255.0**2 / max(pooled_mse, 1e-12))),
        "recon_of_truth_mae": float(recon_mae.mean()),
        "recon_of_truth_psnr": float(per_image_psnr(recon_of_truth, truth).mean()),
        "mae_ratio": float(mae.mean() / max(recon_mae.mean(), 1e-12)),
        "mae_ratio_median": float(np.median(mae / np.maximum(recon_mae, 1e-12))),
        "copy_mae": float(per_image_mae(factual, truth).mean()) if len(images) else 0.0,
        "change_mae": float(per_image_mae(images, factual).mean()) if len(images) else 0.0,
    }


def where_the_error_is(
    model: CausalModel,
    answer: np.ndarray,
    factual: np.ndarray,
    factual_classes: np.ndarray,
    truth: np.ndarray,
    true_classes: np.ndarray,
    recon_of_truth: np.ndarray,
) -> dict[str, float]:
    """Where a counterfactual's error comes from. Per-image MAE split over the pixels the true
    counterfactual changes and those it keeps (each part a share of the whole image's MAE, so
    the two add up), for the answer, the model's reconstruction of the true image (its decoder's
    mode with the true image's z) and the decoder's mode at the true counterfactual classes with
    the factual image's z (the answer without the pixel noise carried over); and how far the
    factual z is from the true image's (z's own error, in the prior's units)."""
    changed = (factual != truth).any(-1)
    share = changed.reshape(len(changed), -1).mean(1)
    z_factual = model.encode(factual, factual_classes)
    z_truth = model.encode(truth, true_classes)
    candidates = {
        "answer": answer,
        "recon_of_truth": recon_of_truth,
        "mode_with_factual_z": model.decode(true_classes, z_factual),
    }
    out = {"changed_pixel_share": float(share.mean())}
    for key, images in candidates.items():
        error = np.abs(images.astype(np.float64) - truth.astype(np.float64)).mean(-1)
        for part, where in (("changed", changed), ("kept", ~changed)):
            out[f"{key}_mae_{part}"] = float((error * where).reshape(len(error), -1).mean(1).mean())
    out["z_distance_factual_to_truth"] = float((z_factual - z_truth).norm(dim=1).mean())
    return out


def nelbo(model: CausalModel, data: Any, rows: np.ndarray) -> dict[str, Any]:
    """Test NELBO (nats per image and bits per dimension) on dataset rows."""
    device = torch.device("cpu")
    record = evaluate_nelbo(
        model.model, training_images(data, device), training_labels(data, device), rows
    )
    dims = int(np.prod(data.schema.image_shape))
    return {
        "nelbo_nats": record["test_nelbo"],
        "recon_nats": record["test_recon"],
        "kl_nats": record["test_kl"],
        "bits_per_dim": bits_per_dim(record["test_nelbo"], dims),
        "classifier_accuracy": record["classifier_accuracy"],
    }


def readout(model: CausalModel, images: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The posterior's mode per factor against the truth, and how many searches completed."""
    start = time.perf_counter()
    posterior = model.infer(images, top=1)
    seconds = time.perf_counter() - start
    mode = posterior.mode
    names = model.schema.names
    accuracy = {n: float((mode[:, i] == truth[:, i]).mean()) for i, n in enumerate(names)}
    confusions = {}
    for i, name in enumerate(names):
        wrong = mode[:, i] != truth[:, i]
        pairs: dict[str, int] = {}
        for t, m in zip(truth[wrong, i], mode[wrong, i], strict=True):
            key = f"{model.schema.factors[i].classes[int(t)]}->{model.schema.factors[i].classes[m]}"
            pairs[key] = pairs.get(key, 0) + 1
        confusions[name] = dict(sorted(pairs.items(), key=lambda kv: -kv[1])[:5])
    return {
        "mode": mode,
        "accuracy": accuracy,
        "accuracy_min": min(accuracy.values()),
        "all_factors_right": float((mode == truth).all(1).mean()),
        "complete_fraction": float(posterior.complete.mean()),
        "confusions": confusions,
        "doubted": doubted_shares(posterior.classifier_agrees, (mode != truth).any(1)),
        "seconds_per_image": seconds / len(images),
    }


def doubted_shares(agrees: np.ndarray, wrong: np.ndarray) -> dict[str, float | None]:
    """How often the readout warns that its classifier reads other factors: over all images,
    the misread ones and the rightly read ones (None where there are none)."""
    doubted = ~agrees
    return {
        "all": float(doubted.mean()),
        "misread": float(doubted[wrong].mean()) if wrong.any() else None,
        "read_right": float(doubted[~wrong].mean()) if (~wrong).any() else None,
    }


def other_classes(
    truth: np.ndarray, column: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """A different class per image (B,) for do(): uniform over the other size - 1 classes."""
    return (truth[:, column] + rng.integers(1, size, len(truth))) % size


def drawn_classes(images: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """The factor classes (B, 4) whose exact render on each image's own background is nearest
    (mean absolute error) to the image: what a counterfactual image actually shows."""
    best = np.full(len(images), np.inf)
    out = np.zeros((len(images), len(NAMES)), dtype=np.int64)
    for combo in itertools.product(*map(range, SIZES_K)):
        classes = np.tile(np.array(combo), (len(images), 1))
        error = per_image_mae(render(classes, grey), images)
        better = error < best
        best[better], out[better] = error[better], combo
    return out


def decoder_diagnostics(
    model: CausalModel, images: np.ndarray, classes: np.ndarray, grey: np.ndarray
) -> dict:
    """The decoder's logistic at q(z | x, y)'s mean, on the object's pixels and the
    background's: mean absolute error of its mean and its median scale, both on the 0-255 scale
    (a decoder that explains the object by a wide scale rather than the right colour shows a
    large object scale); and what the style z holds: the accuracy of a 5-nearest-neighbour
    vote on z's mean for each factor (chance if z carries none) and the R^2 of a linear fit of
    the background's brightness (1 if z holds the nuisance), fitted on one half, tested on the
    other."""
    z = model.encode(images, classes)
    codes = z.numpy().astype(np.float64)
    fit_rows, test_rows = np.arange(len(codes)) % 2 == 0, np.arange(len(codes)) % 2 == 1
    distances = ((codes[test_rows, None] - codes[None, fit_rows]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1)[:, :5]
    z_knn = {}
    for column, (name, size) in enumerate(zip(NAMES, SIZES_K, strict=True)):
        votes = classes[fit_rows, column][nearest]
        guess = np.array([np.bincount(v, minlength=size).argmax() for v in votes])
        z_knn[name] = float((guess == classes[test_rows, column]).mean())
    design = np.c_[codes, np.ones(len(codes))]
    coef, *_ = np.linalg.lstsq(design[fit_rows], grey[fit_rows], rcond=None)
    residual = grey[test_rows] - design[test_rows] @ coef
    brightness_r2 = float(1 - residual.var() / grey[test_rows].var())
    params = model.decode_params(classes, z).numpy()
    mean = (params[:, :3] + 1.0) * 127.5
    scale = np.exp(np.maximum(params[:, 3:], -7.0)) * 127.5
    observed = images.transpose(0, 3, 1, 2).astype(np.float64)
    _, shape, size, posx = classes.T
    on_object = np.broadcast_to(MASKS[shape, size, posx][:, None], mean.shape)
    out = {}
    for label, where in (("object", on_object), ("background", ~on_object)):
        out[label] = {
            "mean_mae": float(np.abs(mean - observed)[where].mean()),
            "median_scale": float(np.median(scale[where])),
        }
    out["z_knn_accuracy"] = z_knn
    out["z_knn_chance"] = {n: 1 / k for n, k in zip(NAMES, SIZES_K, strict=True)}
    out["z_brightness_r2"] = brightness_r2
    return out


# --- scoring one colour set ----------------------------------------------------------------------


def score_colour(
    model: CausalModel,
    data: Dataset,
    kind: str,
    truth_edges: tuple[tuple[str, str], ...],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every metric of one trained colour model on fresh held-out images of its own generator."""
    out: dict[str, Any] = {}
    seed = 1000 if kind == "independent" else 2000
    if kind == "independent":
        classes, grey = independent_draws(args.eval_images, seed)
        noise = None
    else:
        classes, grey, noise = variant_draws(args.eval_images, seed)
    images = render(classes, grey)
    held_out = Dataset(SCHEMA, images, classes.astype(np.float64))
    out["nelbo"] = nelbo(model, held_out, np.arange(len(held_out)))

    recon = model.reconstruct(images, classes)
    recon_mae = per_image_mae(recon, images)
    out["reconstruction"] = {
        "mae": float(recon_mae.mean()),
        "mae_p95": float(np.percentile(recon_mae, 95)),
        "psnr": float(per_image_psnr(recon, images).mean()),
    }
    out["decoder"] = decoder_diagnostics(model, images, classes, grey)
    read = readout(model, images, classes)
    mode = read.pop("mode")
    out["readout"] = read

    rng = np.random.default_rng(seed + 7)
    per_factor: dict[str, Any] = {}
    for column, (name, size) in enumerate(zip(NAMES, SIZES_K, strict=True)):
        target = other_classes(classes, column, size, rng)
        start = time.perf_counter()
        result = model.counterfactual_query(images, classes, do={name: target}, seed=0)
        seconds = time.perf_counter() - start
        if noise is None:
            true_classes = classes.copy()
            true_classes[:, column] = target
        else:
            true_classes = scm_classes(noise, {name: target})
        truth = render(true_classes, grey)
        recon_truth = model.reconstruct(truth, true_classes)
        agree = (result.counterfactual == true_classes).all(1)
        entry: dict[str, Any] = {
            "seconds_per_image": seconds / len(images),
            "class_agreement": float(agree.mean()),
            "all": pixel_scores(result.images, truth, recon_truth, images),
            # What the counterfactual image shows, read exactly (the nearest render with the
            # image's own background), against the classes the model says it drew.
            "effectiveness": float(
                (drawn_classes(result.images, grey) == result.counterfactual).all(1).mean()
            ),
            "where_the_error_is": where_the_error_is(
                model, result.images, images, classes, truth, true_classes, recon_truth
            ),
        }
        if noise is not None:
            entry["class_agreement_ceiling"] = ceiling(classes, noise, name, target, true_classes)
            entry["identified"] = pixel_scores(
                result.images[agree], truth[agree], recon_truth[agree], images[agree]
            )
            entry["identified"]["where_the_error_is"] = where_the_error_is(
                model,
                *(a[agree] for a in (result.images, images, classes, truth, true_classes)),
                recon_truth[agree],
            )
        # Side by side: the same query with each pixel's noise drawn from its posterior, as
        # every answer was before the median became the default for one answer.
        drawn = model.counterfactual_query(
            images, classes, do={name: target}, seed=0, pixel_noise="draw"
        )
        drawn_agree = (drawn.counterfactual == true_classes).all(1)
        entry["drawn_pixel_noise"] = pixel_scores(
            drawn.images[drawn_agree],
            truth[drawn_agree],
            recon_truth[drawn_agree],
            images[drawn_agree],
        )
        # The same query with the factors read off the pixels (the posterior's mode), as a user
        # without labels asks it.
        from_pixels = model.counterfactual_query(images, mode, do={name: target}, seed=0)
        read_agree = (from_pixels.counterfactual == true_classes).all(1)
        entry["labels_read"] = {
            "class_agreement": float(read_agree.mean()),
            **pixel_scores(from_pixels.images, truth, recon_truth, images),
        }
        per_factor[name] = entry
    scope = "all" if noise is None else "identified"
    out["counterfactual"] = {
        "per_factor": per_factor,
        "scope": scope,
        "mae": float(np.mean([f[scope]["mae"] for f in per_factor.values()])),
        "psnr": float(np.mean([f[scope]["psnr"] for f in per_factor.values()])),
        "psnr_min": float(min(f[scope]["psnr"] for f in per_factor.values())),
        "mae_ratio_max": float(max(f[scope]["mae_ratio"] for f in per_factor.values())),
        "mae_ratio_max_drawn_pixel_noise": float(
            max(f["drawn_pixel_noise"]["mae_ratio"] for f in per_factor.values())
        ),
        "recon_of_truth_mae": float(
            np.mean([f[scope]["recon_of_truth_mae"] for f in per_factor.values()])
        ),
        "copy_mae": float(np.mean([f[scope]["copy_mae"] for f in per_factor.values()])),
        "effectiveness_min": float(min(f["effectiveness"] for f in per_factor.values())),
    }

    truth_arg = list(truth_edges)
    start = time.perf_counter()
    from_labels = discover(data.factors(slice(None)), truth_arg, names=NAMES)
    out["discovery_labels"] = discovery_record(from_labels, time.perf_counter() - start)
    if kind == "independent":
        pix_classes, pix_grey = independent_draws(args.pixel_images, seed + 11)
    else:
        pix_classes, pix_grey, _ = variant_draws(args.pixel_images, seed + 11)
    start = time.perf_counter()
    from_pixels = discover_from_images(model, render(pix_classes, pix_grey), truth_arg)
    out["discovery_pixels"] = {
        **discovery_record(from_pixels, time.perf_counter() - start),
        "num_stopped_on_budget": from_pixels["num_stopped_on_budget"],
        # PC on the same images' true labels: what a perfect readout would give.
        "shd_true_labels_same_images": discover(pix_classes, truth_arg, names=NAMES)["shd"],
    }
    return out


def ceiling(
    classes: np.ndarray, noise: dict[str, np.ndarray], name: str, target: np.ndarray, truth: Any
) -> float:
    """How often a perfect model (the true tables, exact Gumbel-max abduction) gets the true
    counterfactual classes: the noise of descendants is not in the image, so this is the most
    any model can agree with the recorded noise's counterfactual (20 draws per image)."""
    draws = 20
    generator = torch.Generator().manual_seed(0)
    agree = np.zeros(len(classes))
    for _ in range(draws):
        sampled = {}
        for column, factor in enumerate(NAMES):
            logits = torch.from_numpy(_logits(factor, classes))
            observed = torch.from_numpy(classes[:, column])
            sampled[factor] = gumbel_posterior(logits, observed, generator).numpy()
        agree += (scm_classes(sampled, {name: target}) == truth).all(1)
    assert (scm_classes(noise) == classes).all()
    return float(agree.mean() / draws)


def discovery_record(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "shd": result["shd"],
        "edges": [
            f"{e['from']}{'->' if e['directed'] else '--'}{e['to']}" for e in result["edges"]
        ],
        "truth_edges": [
            f"{e['from']}{'->' if e['directed'] else '--'}{e['to']}"
            for e in result.get("truth_edges", [])
        ],
        "num_samples": result["num_samples"],
        "seconds": seconds,
    }


#: The `images` preset's training fields a benchmark may override from its command line.
RECIPE_FLAGS = {
    "independence_weight": "the HSIC weight",
    "change_weight": "the small-change term's weight",
    "grad_clip": "clip at this many times the recent median gradient norm (0: none)",
}


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """--independence-weight, --change-weight and --grad-clip (default: the preset's)."""
    for name, meaning in RECIPE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=float, help=f"{meaning} (default: the preset's)")


def recipe_overrides(args: argparse.Namespace) -> dict[str, float]:
    """The RECIPE_FLAGS given on the command line, as TrainConfig fields."""
    return {name: value for name in RECIPE_FLAGS if (value := getattr(args, name)) is not None}


def train_colour(
    kind: str, args: argparse.Namespace, workdir: Path
) -> tuple[CausalModel, Dataset, dict[str, Any]]:
    """Make the set, train the `images` preset on it for --minutes with one thread."""
    if kind == "independent":
        classes, grey = independent_set(args.repeats, seed=0)
        edges: tuple[tuple[str, str], ...] = ()
    else:
        classes, grey, _ = variant_draws(args.repeats * int(np.prod(SIZES_K)), seed=1)
        edges = VARIANT_EDGES
    data = Dataset(SCHEMA, render(classes, grey), classes.astype(np.float64))
    combos = np.unique(classes @ np.array([30, 15, 5, 1]), return_counts=True)[1]
    preset = PRESETS["images"]
    config = replace(
        preset,
        graph=edges,
        train=replace(
            preset.train,
            max_minutes=args.minutes,
            seed=args.seed,
            **recipe_overrides(args),
        ),
    )
    run_dir = workdir / kind
    start = time.perf_counter()
    record = fit(run_dir, config, data, torch.device("cpu"), progress=False)
    wall = time.perf_counter() - start
    info = {
        "num_images": len(data),
        "combinations_present": len(combos),
        "combinations": int(np.prod(SIZES_K)),
        "min_count_per_combination": int(combos.min()),
        "graph": [f"{a}->{b}" for a, b in edges],
        "train_minutes": args.minutes,
        "train_steps": record["step"],
        "train_seconds": record["elapsed"],
        "train_wall_seconds": wall,
        "clipped_steps": record.get("clipped_steps", 0),
        "fit_test_nelbo_nats": record["test_nelbo"],
        "fit_test_bits_per_dim": bits_per_dim(record["test_nelbo"], HEIGHT * WIDTH * 3),
        "fit_classifier_accuracy": record["classifier_accuracy"],
        "config": {"model": vars(config.model), "train": vars(config.train)},
    }
    return load_run(run_dir), data, info


# --- dSprites, the pretrained model --------------------------------------------------------------


def score_dsprites(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped pretrained model on held-out dSprites images, the same metrics (binary pixels
    as 0 and 255), counterfactuals against the dSprites image of the new factors."""
    model = load_run("pretrained")
    data = DSprites.load()
    _, test_rows = split_rows(data, model.config)
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(test_rows, args.dsprites_images, replace=False))
    images, classes = data.images(rows), data.factors(rows)
    out: dict[str, Any] = {"num_images": len(rows)}
    out["nelbo"] = nelbo(model, data, rows)
    recon = model.reconstruct(images, classes)
    recon_mae = per_image_mae(recon * 255, images * 255)
    out["reconstruction"] = {
        "mae": float(recon_mae.mean()),
        "mae_p95": float(np.percentile(recon_mae, 95)),
        "psnr": float(per_image_psnr(recon * 255, images * 255).mean()),
    }
    read = readout(model, images, classes)
    equivalent = readout_accuracy(read.pop("mode"), classes, images, model.schema)
    # A square turned a quarter draws the same sprite: orientation's class is not in the pixels.
    read["image_equivalent"] = equivalent["image_equivalent"]
    read["all_image_equivalent"] = equivalent["all_image_equivalent"]
    out["readout"] = read
    per_factor = {}
    names = model.schema.names
    for column, factor in enumerate(model.schema.factors):
        target = other_classes(classes, column, factor.size, rng)
        result = model.counterfactual(images, classes, do={factor.name: target}, seed=0)
        true_classes = classes.copy()
        true_classes[:, column] = target
        true_rows = [data.index(**dict(zip(names, map(int, c), strict=True))) for c in true_classes]
        truth = data.images(np.array(true_rows))
        recon_truth = model.reconstruct(truth, true_classes)
        per_factor[factor.name] = pixel_scores(
            result * 255, truth * 255, recon_truth * 255, images * 255
        )
    out["counterfactual"] = {
        "per_factor": per_factor,
        "scope": "all",
        "mae": float(np.mean([f["mae"] for f in per_factor.values()])),
        "psnr": float(np.mean([f["psnr"] for f in per_factor.values()])),
        "psnr_min": float(min(f["psnr"] for f in per_factor.values())),
        "mae_ratio_max": float(max(f["mae_ratio"] for f in per_factor.values())),
        "recon_of_truth_mae": float(
            np.mean([f["recon_of_truth_mae"] for f in per_factor.values()])
        ),
        "copy_mae": float(np.mean([f["copy_mae"] for f in per_factor.values()])),
    }
    start = time.perf_counter()
    labels = discover(data.factors(slice(None)), [], names=names, max_samples=100_000)
    out["discovery_labels"] = discovery_record(labels, time.perf_counter() - start)
    pixel_rows = np.sort(rng.choice(test_rows, args.pixel_images, replace=False))
    start = time.perf_counter()
    pixels = discover_from_images(model, data.images(pixel_rows), [])
    out["discovery_pixels"] = {
        **discovery_record(pixels, time.perf_counter() - start),
        "num_stopped_on_budget": pixels["num_stopped_on_budget"],
    }
    out["train_minutes_shipped"] = model.config.train.max_minutes
    return out


# --- the big set ---------------------------------------------------------------------------------

BIG_SIZES = (10, 10, 10, 8, 4, 15)  # floor_hue, wall_hue, object_hue, scale, shape, orientation
BIG_VALUES = (
    np.linspace(0, 0.9, 10),
    np.linspace(0, 0.9, 10),
    np.linspace(0, 0.9, 10),
    np.linspace(0.75, 1.25, 8),
    np.arange(4.0),
    np.linspace(-30, 30, 15),
)
BIG_CHUNK = 8_000


def _hue_rgb(hue: np.ndarray, value: float) -> np.ndarray:
    """RGB (..., 3) uint8 of hues in [0, 1) at full saturation and brightness `value`."""
    k = (np.asarray(hue)[..., None] * 6 + np.array([5, 3, 1])) % 6
    return (value * 255 * (1 - np.clip(np.minimum(k, 4 - k), 0, 1))).astype(np.uint8)


def _big_masks() -> np.ndarray:
    """Object pixels (8, 4, 15, 64, 64) bool per scale, shape and orientation: a square, disc,
    bar or diamond of the scale's size, shifted by the orientation."""
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    out = np.zeros((8, 4, 15, 64, 64), dtype=bool)
    for scale, shape, turn in itertools.product(range(8), range(4), range(15)):
        half = 5 + scale
        dy, dx = rows - 40, cols - (18 + 2 * turn)
        out[scale, shape, turn] = (
            (np.abs(dy) < half) & (np.abs(dx) < half),
            dy**2 + dx**2 < half**2,
            (np.abs(dy) < half) & (np.abs(dx) < half / 2),
            np.abs(dy) + np.abs(dx) < half,
        )[shape]
    return out


def make_big_h5(path: Path, num: int) -> dict[str, Any]:
    """`num` images in 3dshapes' layout (`images` (N, 64, 64, 3) uint8, `labels` (N, 6)), the
    combinations in 3dshapes' order (orientation fastest), written chunk by chunk."""
    import h5py

    masks = _big_masks()
    floor_rgb = _hue_rgb(BIG_VALUES[0], 0.9)
    wall_rgb = _hue_rgb(BIG_VALUES[1], 0.7)
    object_rgb = _hue_rgb(BIG_VALUES[2], 1.0)
    start = time.perf_counter()
    with h5py.File(path, "w") as file:
        images = file.create_dataset(
            "images", (num, 64, 64, 3), dtype=np.uint8, chunks=(256, 64, 64, 3)
        )
        labels = file.create_dataset("labels", (num, 6), dtype=np.float64)
        for first in range(0, num, BIG_CHUNK):
            index = np.arange(first, min(first + BIG_CHUNK, num))
            c = np.stack(np.unravel_index(index % math.prod(BIG_SIZES), BIG_SIZES), axis=1)
            chunk = np.empty((len(index), 64, 64, 3), dtype=np.uint8)
            chunk[:, :32] = wall_rgb[c[:, 1]][:, None, None]
            chunk[:, 32:] = floor_rgb[c[:, 0]][:, None, None]
            mask = masks[c[:, 3], c[:, 4], c[:, 5]][..., None]
            chunk = np.where(mask, object_rgb[c[:, 2]][:, None, None], chunk)
            images[index[0] : index[-1] + 1] = chunk
            labels[index[0] : index[-1] + 1] = np.stack(
                [v[c[:, i]] for i, v in enumerate(BIG_VALUES)], axis=1
            )
    return {"num_images": num, "bytes": path.stat().st_size, "seconds": time.perf_counter() - start}


def timed_subprocess(command: list[str]) -> dict[str, Any]:
    """Run under `/usr/bin/time -v` with one OpenMP thread: exit code, wall seconds and the peak
    resident set (MiB) of the process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {
        "command": " ".join(command),
        "returncode": done.returncode,
        "seconds": seconds,
        "peak_rss_mib": int(peak.group(1)) / 1024 if peak else None,
        "stdout_tail": done.stdout[-1500:],
        "stderr_tail": "\n".join(
            line for line in done.stderr.splitlines()[-40:] if "\t" not in line
        )[-1500:],
    }


def big_set(args: argparse.Namespace) -> dict[str, Any]:
    """Make, import and train on the big set; peak RSS of the import and the training."""
    folder = Path(args.big_dir)
    folder.mkdir(parents=True, exist_ok=True)
    need = args.big_images * 64 * 64 * 3 * 2.05
    free = shutil.disk_usage(folder).free
    out: dict[str, Any] = {"folder": str(folder), "disk_free_bytes": free, "needed_bytes": need}
    num = args.big_images
    if free < need:
        num = int(free / (64 * 64 * 3 * 2.2))
        out["scaled_down_to"] = num
    h5, npz, run = folder / "big.h5", folder / "big.npz", folder / "big-run"
    try:
        out["write"] = make_big_h5(h5, num)
        out["num_images"] = num
        out["import"] = timed_subprocess([*CLI, "data", "import", str(h5), "--out", str(npz)])
        files = [npz, npz.with_name("big.images.npy")]
        out["imported_bytes"] = sum(p.stat().st_size for p in files if p.exists())
        h5.unlink()
        out["train"] = timed_subprocess(
            [
                *CLI,
                "train",
                "--out",
                str(run),
                "--data",
                str(npz),
                "--steps",
                str(args.big_steps),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        metrics = run / "metrics.jsonl"
        if metrics.exists():
            final = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
            out["train_final"] = {k: final.get(k) for k in ("step", "elapsed", "test_nelbo")}
    finally:
        for path in (h5, npz, npz.with_name("big.images.npy")):
            path.unlink(missing_ok=True)
        shutil.rmtree(run, ignore_errors=True)
    return out


# --- targets and the table -----------------------------------------------------------------------

GIB = 1024.0


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's measurable "Done when" bounds, each with its value and whether it is met."""
    table: dict[str, Any] = {}

    def check(name: str, value: Any, bound: float, direction: str) -> None:
        met = None if value is None else (value >= bound if direction == ">=" else value <= bound)
        table[name] = {"value": value, "target": f"{direction} {bound}", "met": met}

    for kind in ("independent", "variant"):
        scores = results.get(kind)
        if scores is None:
            continue
        check(f"{kind}.readout_accuracy_min", scores["readout"]["accuracy_min"], 0.98, ">=")
        cf = scores["counterfactual"]
        check(f"{kind}.counterfactual_mae_ratio_max", cf["mae_ratio_max"], 1.2, "<=")
        check(f"{kind}.counterfactual_psnr_min", cf["psnr_min"], 28.0, ">=")
        check(f"{kind}.shd_labels", scores["discovery_labels"]["shd"], 0, "<=")
        check(f"{kind}.shd_pixels", scores["discovery_pixels"]["shd"], 0, "<=")
    big = results.get("big")
    if big is not None:
        for step in ("import", "train"):
            entry = big.get(step, {})
            peak = entry.get("peak_rss_mib")
            ok = entry.get("returncode") == 0
            check(f"big.{step}_peak_rss_mib", peak if ok else None, 2 * GIB, "<=")
    return table


def markdown(results: dict[str, Any]) -> str:
    """Side-by-side table of the three models, then the targets and the big set."""
    columns = [k for k in ("independent", "variant", "dsprites") if k in results]
    heads = {
        "independent": "colour, independent",
        "variant": "colour, variant",
        "dsprites": "dSprites (pretrained)",
    }

    def row(label: str, get: Any, fmt: str) -> str:
        cells = []
        for kind in columns:
            try:
                value = get(results[kind])
                cells.append(format(value, fmt) if value is not None else "-")
            except (KeyError, TypeError):
                cells.append("-")
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "| metric | " + " | ".join(heads[k] for k in columns) + " |",
        "|---|" + "---|" * len(columns),
        row("image shape", lambda r: r.get("image_shape"), ""),
        row("training (minutes, steps)", lambda r: r.get("training_summary"), ""),
        row("test NELBO (nats/image)", lambda r: r["nelbo"]["nelbo_nats"], ".1f"),
        row("test NELBO (bits/dim)", lambda r: r["nelbo"]["bits_per_dim"], ".4f"),
        row("reconstruction MAE (0-255)", lambda r: r["reconstruction"]["mae"], ".2f"),
        row("reconstruction PSNR (dB)", lambda r: r["reconstruction"]["psnr"], ".1f"),
        row("readout accuracy, worst factor", lambda r: r["readout"]["accuracy_min"], ".4f"),
        row(
            "readout, worst factor, same image",
            lambda r: min(r["readout"]["image_equivalent"].values()),
            ".4f",
        ),
        row("readout: all factors right", lambda r: r["readout"]["all_factors_right"], ".4f"),
        row("readout: searches complete", lambda r: r["readout"]["complete_fraction"], ".4f"),
        row("counterfactual MAE (0-255)", lambda r: r["counterfactual"]["mae"], ".2f"),
        row(
            "recon. of the true image, MAE",
            lambda r: r["counterfactual"]["recon_of_truth_mae"],
            ".2f",
        ),
        row(
            "CF MAE / recon MAE, worst factor",
            lambda r: r["counterfactual"]["mae_ratio_max"],
            ".3f",
        ),
        row(
            "same, each pixel's noise drawn (before)",
            lambda r: r["counterfactual"]["mae_ratio_max_drawn_pixel_noise"],
            ".3f",
        ),
        row(
            "same, returning the input unchanged", lambda r: r["counterfactual"]["copy_mae"], ".2f"
        ),
        row(
            "CF shows the new factors (exact), worst",
            lambda r: r["counterfactual"]["effectiveness_min"],
            ".3f",
        ),
        row(
            "decoder object-pixel scale (0-255)",
            lambda r: r["decoder"]["object"]["median_scale"],
            ".1f",
        ),
        row("CF PSNR (dB), mean", lambda r: r["counterfactual"]["psnr"], ".1f"),
        row("CF PSNR (dB), worst factor", lambda r: r["counterfactual"]["psnr_min"], ".1f"),
        row("discovery SHD from labels", lambda r: r["discovery_labels"]["shd"], ""),
        row("discovery SHD from pixels", lambda r: r["discovery_pixels"]["shd"], ""),
    ]
    lines += ["", "| target | value | bound | met |", "|---|---|---|---|"]
    for name, entry in results["targets"].items():
        value = entry["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        met = {True: "yes", False: "**no**", None: "-"}[entry["met"]]
        lines.append(f"| {name} | {shown} | {entry['target']} | {met} |")
    big = results.get("big")
    if big is not None:
        lines += [
            "",
            "| big set | images | seconds | peak RSS (MiB) | exit |",
            "|---|---|---|---|---|",
        ]
        lines.append(
            f"| write .h5 | {big.get('num_images')} | {big['write']['seconds']:.0f} | - | - |"
        )
        for step in ("import", "train"):
            entry = big.get(step)
            if entry:
                lines.append(
                    f"| {step} | {big.get('num_images')} | {entry['seconds']:.0f} | "
                    f"{entry['peak_rss_mib']:.0f} | {entry['returncode']} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per set")
    parser.add_argument("--repeats", type=int, default=100, help="images per factor combination")
    parser.add_argument("--eval-images", type=int, default=600, help="held-out images per set")
    parser.add_argument("--pixel-images", type=int, default=4000, help="images for discovery")
    parser.add_argument("--dsprites-images", type=int, default=300)
    parser.add_argument("--big-images", type=int, default=480_000)
    parser.add_argument("--big-steps", type=int, default=200)
    parser.add_argument("--big-dir", default=None, help="folder for the big set (default: tmp)")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-dsprites", action="store_true")
    parser.add_argument(
        "--only", choices=("independent", "variant", "none"), help="colour sets to train"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_recipe_flags(parser)
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the trained runs here")
    parser.add_argument("--out", type=Path, default=RESULTS / "own-data.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "own_data",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_before": list(os.getloadavg()),
        },
        "dataset": {
            "schema": SCHEMA.to_json(),
            "nuisance": f"grey background brightness, uniform {BRIGHTNESS[0]}..{BRIGHTNESS[1]}",
            "variant_edges": [f"{a}->{b}" for a, b in VARIANT_EDGES],
            "variant_tables": {k: v.tolist() for k, v in TABLES.items()},
        },
    }
    kinds = {None: ["independent", "variant"], "none": []}.get(args.only, [args.only])
    with tempfile.TemporaryDirectory(prefix="own-data-") as tmp:
        if args.keep_runs is not None:
            args.keep_runs.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            print(f"[{time.perf_counter() - started:.0f}s] training on the {kind} set", flush=True)
            model, data, info = train_colour(kind, args, args.keep_runs or Path(tmp))
            print(f"[{time.perf_counter() - started:.0f}s] scoring the {kind} set", flush=True)
            start = time.perf_counter()
            scores = score_colour(
                model, data, kind, () if kind == "independent" else VARIANT_EDGES, args
            )
            results[kind] = {
                "image_shape": "x".join(map(str, SCHEMA.image_shape)),
                "training_summary": f"{args.minutes:g}, {info['train_steps']}",
                "training": info,
                **scores,
                "score_seconds": time.perf_counter() - start,
                "load_after": list(os.getloadavg()),
            }
            partial = {**results, "targets": targets(results)}
            args.out.write_text(json.dumps(partial, indent=2, default=_json_default) + "\n")
    if not args.skip_dsprites:
        print(f"[{time.perf_counter() - started:.0f}s] scoring pretrained dSprites", flush=True)
        start = time.perf_counter()
        shipped = read_metrics(resolve_run("pretrained"))[-1]
        results["dsprites"] = {
            "image_shape": "64x64x1 (binary)",
            "training_summary": f"{shipped['elapsed'] / 60:.0f} (shipped), {shipped['step']}",
            **score_dsprites(args),
            "score_seconds": time.perf_counter() - start,
        }
    if not args.skip_big:
        print(f"[{time.perf_counter() - started:.0f}s] the big set", flush=True)
        big_dir = args.big_dir or tempfile.mkdtemp(prefix="own-data-big-")
        args.big_dir = big_dir
        try:
            results["big"] = big_set(args)
        finally:
            if not os.listdir(big_dir):
                os.rmdir(big_dir)
    results["machine"]["load_after"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - started
    results["targets"] = targets(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    main()
