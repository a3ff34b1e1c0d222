"""Where the image does not determine a counterfactual (a variant's stochastic mechanism
downstream of do(): the factual pins its noise only in distribution), a model's one answer per
query cannot be scored image for image, but the distribution of its answers can. Per descendant
factor, `benchmark` reports the total variation between the distributions of the pair (factual
class, counterfactual class) over those queries, the model's (read back) against the truth's
(its recorded noise), beside its floor: the same TV for a perfect model (noise drawn from its
exact posterior), which is above 0 from sampling alone. Pairing with the factual class is what
tells a counterfactual from an intervention: both give the same marginal over the queries."""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from causal_sprites.benchmark_queries import QuerySet
from causal_sprites.benchmark_truth import Known, VariantTruth
from causal_sprites.metrics import total_variation

#: Perfect-model draws averaged for the floor.
FLOOR_DRAWS: Final = 10


def _pair_distribution(factual: np.ndarray, counterfactual: np.ndarray, size: int) -> np.ndarray:
    """Empirical distribution (size * size,) of (factual class, counterfactual class) pairs."""
    pairs = np.asarray(factual, np.int64) * size + np.asarray(counterfactual, np.int64)
    return np.bincount(pairs, minlength=size * size)[: size * size] / max(len(pairs), 1)


def _descendant_queries(known: Known, queries: QuerySet, identified: np.ndarray) -> dict[str, Any]:
    """{factor: indices of the unidentified queries it descends from the do() of}."""
    out: dict[str, list[np.ndarray]] = {}
    for k, names in enumerate(queries.kinds):
        members = np.flatnonzero((queries.kind == k) & ~identified)
        if len(members):
            for name in known.descendants(list(names)):
                out.setdefault(name, []).append(members)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _perfect_answers(known: Known, queries: QuerySet, chosen: np.ndarray, seed: int) -> np.ndarray:
    """A perfect model's counterfactual classes (len(chosen), K) of queries `chosen`, one kind
    at a time: noise drawn from its exact posterior given the factual classes."""
    assert isinstance(known.truth, VariantTruth)
    out = np.empty((len(chosen), len(known.schema.names)), np.int64)
    for k in np.unique(queries.kind[chosen]):
        at = np.flatnonzero(queries.kind[chosen] == k)
        do = queries.do(chosen[at], known.schema)
        out[at] = known.truth.posterior_classes(queries.rows[chosen[at]], do, seed)
    return out


def distribution_scores(
    known: Known,
    queries: QuerySet,
    identified: np.ndarray,
    factual: np.ndarray,
    truth: np.ndarray,
    read: np.ndarray,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Per descendant factor of the unidentified queries: `tv` (the model's answers, classes
    `read` (N, K) off its images, against the truth's classes `truth` (N, K), each paired with
    the factual classes `factual` (N, K)), `floor` (the mean TV of `FLOOR_DRAWS` perfect models'
    answers against the truth) and `queries`. {} where every query is identified."""
    if not isinstance(known.truth, VariantTruth):
        return {}
    schema = known.schema
    out = {}
    for name, chosen in sorted(_descendant_queries(known, queries, identified).items()):
        column, size = schema.index(name), schema.factor(name).size
        before = factual[chosen, column]
        true = _pair_distribution(before, truth[chosen, column], size)
        floors = [
            total_variation(
                _pair_distribution(
                    before, _perfect_answers(known, queries, chosen, seed + d)[:, column], size
                ),
                true,
            )
            for d in range(FLOOR_DRAWS)
        ]
        out[name] = {
            "tv": total_variation(_pair_distribution(before, read[chosen, column], size), true),
            "floor": float(np.mean(floors)),
            "queries": len(chosen),
        }
    return out
