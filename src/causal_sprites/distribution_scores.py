"""Conditional and interventional distributions of a run against the truth (a causal variant's
exact tables, else the data's labels), as total variation, from the SCM itself and from generated
images read back by an oracle. Part of `evaluation`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from causal_sprites.data.schema import Schema
from causal_sprites.data.variants import distribution
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import (
    accuracy,
    empirical_conditional,
    label_distribution,
    sampling_floor,
    total_variation,
)
from causal_sprites.scores import DistributionEntry, DistributionScores, QueryScores


def _query_scores(
    result: Any, predicted: np.ndarray, schema: Schema, target: str, truth: np.ndarray, seed: int
) -> QueryScores:
    """One query's TVs against its truth: the SCM's exact marginal (`tv_scm`), the oracle's
    reading of the generated images (`tv_oracle`), the classes the SCM drew for those images
    (`tv_drawn`, sampling noise only), the oracle's reading against those classes
    (`tv_oracle_vs_drawn`, image errors only) and the sampling floor for this many images."""
    column = schema.index(target)
    size = schema.factors[column].size
    drawn = np.asarray(result.classes)[:, column]
    read = np.asarray(predicted)[:, column]
    read_dist = label_distribution(read, size)
    return QueryScores(
        tv_scm=total_variation(result.marginals[target], truth),
        tv_oracle=total_variation(read_dist, truth),
        tv_drawn=total_variation(label_distribution(drawn, size), truth),
        tv_oracle_vs_drawn=total_variation(read_dist, label_distribution(drawn, size)),
        oracle_agreement=accuracy(read, drawn),
        sampling_floor=sampling_floor(truth, len(read), seed=seed),
        seconds=float(result.seconds),
    )


def score_distributions(
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
    reader: str = "oracle",
) -> DistributionScores:
    """The model's P(target | do(set = v)) and P(target | set = v) against the truth, as total
    variation distance, estimated (a) from `num_samples` generated images read by the oracle and
    (b) from the SCM directly (the exact marginals of `intervene_query` / `condition_query`).

    `spec` is the truth's VariantSpec (exact distributions from `variants.distribution`); None is
    plain data whose factors are independent (dSprites): the truth is then the empirical
    distribution of `data`'s labels (P(target) under do, P(target | set = v) when conditioning),
    or uniform without data. Factors are those of the spec's schema, else the data's, else the
    model's. By default every edge parent -> child of the truth (without a spec, the example
    first factor -> second factor: shape -> scale on dSprites) is asked both ways:
    P(child | parent = v) (`direction` "child_given_parent", where do and conditioning agree
    when the parent has no confounder) and P(parent | child = v) ("parent_given_child", where
    they differ: intervening on an effect leaves its cause alone).
    `pairs` [(set, target)] replaces them; `values` {factor: value} picks v (default: the last
    class of the set factor). `reader` says what `oracle` is, for the JSON.

    Returns `DistributionScores`: `entries`, one per query: `edge`, `direction`, `set`,
    `target`, `value`, then `intervention` and `condition`, each with `tv_scm`, `tv_oracle`,
    `tv_drawn`, `tv_oracle_vs_drawn`, `oracle_agreement`, `sampling_floor` and `seconds`, plus
    `truth_tv_do_vs_condition` and `scm_tv_do_vs_condition`; and the maxima over entries
    `tv_intervention`, `tv_condition` (SCM), `tv_intervention_oracle`, `tv_condition_oracle`,
    `sampling_floor` (the largest TV a perfect model would show from sampling alone), with
    `num_samples`. With `return_distributions` each entry also carries the distributions.
    """
    if num_samples < 1:
        raise CausalSpritesError(f"num_samples must be >= 1, got {num_samples}")
    schema = spec.schema if spec is not None else (data if data is not None else model).schema
    edges = tuple(spec.edges) if spec is not None else (schema.names[:2],)
    queries: list[tuple[str, str, str | None, str | None]]
    if pairs is None:
        queries = [(p, c, f"{p}->{c}", "child_given_parent") for p, c in edges]
        queries += [(c, p, f"{p}->{c}", "parent_given_child") for p, c in edges]
    else:
        queries = [(s, t, None, None) for s, t in pairs]
    chosen = schema.classes(values or {})
    labels = None if data is None or spec is not None else data.factors(slice(None))
    entries: list[DistributionEntry] = []
    for index, (setter, target, edge, direction) in enumerate(queries):
        if setter == target or setter not in schema.names or target not in schema.names:
            raise CausalSpritesError(f"bad pair {setter} -> {target}: two distinct factors needed")
        value = chosen.get(setter, schema.factor(setter).size - 1)
        size = schema.factor(target).size
        if spec is not None:
            truth_do = distribution(spec, target, do={setter: value})
            truth_condition = distribution(spec, target, given={setter: value})
        elif labels is not None:
            truth_do = empirical_conditional(labels, target, sizes=schema.size_of)
            truth_condition = empirical_conditional(
                labels, target, {setter: value}, sizes=schema.size_of
            )
        else:
            truth_do = truth_condition = np.full(size, 1.0 / size)
        query_seed = seed + 2 * index
        done = model.intervene_query({setter: value}, num_samples, seed=query_seed)
        seen = model.condition_query({setter: value}, num_samples, seed=query_seed + 1)
        read_do, read_condition = oracle.predict(done.images), oracle.predict(seen.images)
        distributions = None
        if return_distributions:
            distributions = {
                "truth_do": np.asarray(truth_do).tolist(),
                "truth_condition": np.asarray(truth_condition).tolist(),
                "scm_do": np.asarray(done.marginals[target]).tolist(),
                "scm_condition": np.asarray(seen.marginals[target]).tolist(),
                "oracle_do": label_distribution(read_do[:, schema.index(target)], size).tolist(),
                "oracle_condition": label_distribution(
                    read_condition[:, schema.index(target)], size
                ).tolist(),
            }
        entries.append(
            DistributionEntry(
                edge=edge,
                direction=direction,
                set=setter,
                target=target,
                value=int(value),
                intervention=_query_scores(done, read_do, schema, target, truth_do, query_seed),
                condition=_query_scores(
                    seen, read_condition, schema, target, truth_condition, query_seed + 1
                ),
                truth_tv_do_vs_condition=total_variation(truth_do, truth_condition),
                scm_tv_do_vs_condition=total_variation(
                    done.marginals[target], seen.marginals[target]
                ),
                distributions=distributions,
            )
        )

    def largest(key: str, *modes: str) -> float:
        found = (getattr(getattr(e, mode), key) for e in entries for mode in modes)
        return max(found, default=float("nan"))

    return DistributionScores(
        tv_intervention=largest("tv_scm", "intervention"),
        tv_condition=largest("tv_scm", "condition"),
        tv_intervention_oracle=largest("tv_oracle", "intervention"),
        tv_condition_oracle=largest("tv_oracle", "condition"),
        sampling_floor=largest("sampling_floor", "intervention", "condition"),
        num_samples=num_samples,
        truth="variant" if spec is not None else ("data" if labels is not None else "uniform"),
        entries=entries,
        reader=reader,
    )
