"""Evaluation: pure metric functions of arrays, and `evaluate(run)` that applies them.

z-leakage follows the probing idea of disentanglement_lib (a small classifier predicts each factor
from the latent code); for a conditional VAE low is good, the factors belong in y.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from causal_sprites.data.factors import FACTORS, SIZES


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


def evaluate(run: Any, data: Any, num_images: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Test-set metrics of a run: NELBO (recon, KL), reconstruction IoU and pixel error,
    classifier accuracy per factor and z-leakage, on up to `num_images` held-out images."""
    from causal_sprites.train import evaluate_nelbo, split_rows

    model, config = run.model, run.config
    _, test_rows = split_rows(data, config)
    rows = np.sort(np.random.default_rng(seed).permutation(test_rows)[:num_images])
    device = next(model.parameters()).device
    packed = torch.from_numpy(data.packed).to(device)
    labels = torch.from_numpy(data.classes(slice(None))[:, 1:]).to(device)
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
    return scores
