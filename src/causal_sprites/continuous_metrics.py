"""Metrics of factors that may be continuous: pure functions of arrays, beside `metrics.py`'s
(which count classes). An error is in the factor's unit; a categorical factor's is whether the
class differs, so that one function scores either kind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from causal_sprites.data.schema import Factor, Schema
from causal_sprites.metrics import exact_readout, probe_leakage


def value_error(factor: Factor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-entry error (B,) between two arrays of one factor's values: the absolute difference in
    its unit for a continuous factor (around the circle of its range for a cyclic one), 1 where
    the classes differ for a categorical one (its mean is the share read wrong)."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if factor.kind == "categorical":
        return (diff > 0.5).astype(np.float64)
    if factor.cyclic:
        assert factor.low is not None and factor.high is not None
        turn = factor.high - factor.low
        diff = np.mod(diff, turn)
        return np.minimum(diff, turn - diff)
    return diff


def regression_leakage(
    codes: np.ndarray, values: np.ndarray, names: Sequence[str], seed: int = 0
) -> dict[str, float]:
    """How well a least-squares linear probe predicts each continuous factor (values (N, C),
    columns `names`) from codes (N, d) on a held-out half: its R^2 there, floored at 0 (0: z
    tells nothing of the factor, 1: it gives it away), as `metrics.probe_leakage` for classes."""
    order = np.random.default_rng(seed).permutation(len(codes))
    fit, test = order[: len(order) // 2], order[len(order) // 2 :]
    design = np.c_[np.asarray(codes, np.float64), np.ones(len(codes))]
    values = np.asarray(values, np.float64)
    weights = np.linalg.lstsq(design[fit], values[fit], rcond=None)[0]
    residual = ((design[test] @ weights - values[test]) ** 2).sum(0)
    total = ((values[test] - values[test].mean(0)) ** 2).sum(0)
    return {
        name: max(0.0, 1.0 - float(r / t)) if t > 0 else 0.0
        for name, r, t in zip(names, residual, total, strict=True)
    }


def factor_leakage(
    codes: np.ndarray, labels: np.ndarray, schema: Schema, seed: int = 0
) -> dict[str, float]:
    """z-leakage of each factor of `schema` from codes (N, d), labels (N, K): `probe_leakage` of
    the categorical factors, `regression_leakage` of the continuous ones, in factor order."""
    labels = np.asarray(labels, np.float64)
    classes = np.array([f.kind == "categorical" for f in schema.factors])
    sizes = {f.name: f.size for f in schema.factors if f.kind == "categorical"}
    found = probe_leakage(codes, labels[:, classes], seed=seed, sizes=sizes) if sizes else {}
    if not classes.all():
        found.update(regression_leakage(codes, labels[:, ~classes], schema.continuous, seed))
    return {name: found[name] for name in schema.names}


def factor_readout(predicted: np.ndarray, truth: np.ndarray, schema: Schema) -> dict[str, Any]:
    """How well factors (B, K) read off images match the true ones (B, K): `exact_readout` where
    every factor is categorical; else each categorical factor's exact accuracy (`exact`) and each
    continuous factor's mean and median absolute error in its unit."""
    if schema.categorical:
        return exact_readout(predicted, truth, schema.names)
    errors = {
        f.name: value_error(f, predicted[:, k], truth[:, k]) for k, f in enumerate(schema.factors)
    }
    continuous = set(schema.continuous)
    return {
        "exact": {n: 1.0 - float(e.mean()) for n, e in errors.items() if n not in continuous},
        "mean_abs_error": {n: float(e.mean()) for n, e in errors.items() if n in continuous},
        "median_abs_error": {n: float(np.median(e)) for n, e in errors.items() if n in continuous},
    }
