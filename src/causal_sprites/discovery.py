"""Causal discovery over a dataset's categorical factors: the PC algorithm (Spirtes, Glymour &
Scheines 2000) of causal-learn (Zheng et al. 2024) and the structural Hamming distance between
CPDAGs (Tsamardinos, Brown & Aliferis 2006).

The factors are categorical with up to 40 classes, so the conditional independence test is
Pearson's chi-square on the stratified contingency tables: it needs no distributional assumption
(Fisher-z would assume linear-Gaussian data) and, unlike the G-square test, stays close to its
chi-square reference distribution when tables are sparse (40 x 32 x 32 cells against tens of
thousands of rows; Agresti 2013, sec. 3.2.4), so it does not invent edges there. `test="gsq"`
is available as a cross-check.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from causallearn.search.ConstraintBased.PC import pc
from scipy import stats

from causal_sprites.data.load import load_data
from causal_sprites.data.schema import Schema
from causal_sprites.data.variants import VariantSpec
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import DRAW_TOP
from causal_sprites.scm.graph import topological_order

#: Significance level of each test: with 10^4-10^5 rows the dependencies of interest have
#: p-values far below it, and the ~10-30 tests PC runs then add a false edge with about 1-3 %.
DEFAULT_ALPHA = 1e-3
#: Fewest rows we run PC on; below it the tables are too sparse for any conclusion.
MIN_SAMPLES = 50

#: A CPDAG as {(a, b): mark} over unordered pairs a < b in factor order; mark is "->" (a -> b),
#: "<-" (b -> a), "--" (undirected) or "<->" (PC found conflicting colliders).
Cpdag = dict[tuple[str, str], str]


class Posterior(Protocol):
    """A posterior over factor tuples that can be drawn from (`model.readout.FactorPosterior`)."""

    @property
    def complete(self) -> np.ndarray: ...

    def sample(self, num_samples: int, generator: np.random.Generator) -> np.ndarray: ...


class LabelInferrer(Protocol):
    """Anything that gives the posterior p(y | x) of images (B, H, W), e.g. a CausalModel."""

    @property
    def schema(self) -> Schema: ...

    def infer(self, x: np.ndarray, top: int = 5) -> Posterior: ...


def _pair(a: str, b: str, names: Sequence[str]) -> tuple[tuple[str, str], bool]:
    """The canonical (first, second) pair in factor order and whether (a, b) was flipped."""
    flipped = names.index(a) > names.index(b)
    return ((b, a) if flipped else (a, b)), flipped


def cpdag_of_dag(edges: Iterable[tuple[str, str]], names: Sequence[str]) -> Cpdag:
    """The CPDAG (Markov equivalence class) of a DAG's (parent, child) edges over the factors
    `names`: the v-structures directed, then Meek's rules R1-R3 to a fixpoint (complete for a
    DAG's pattern; Meek 1995)."""
    directed = set(edges)
    for pair in directed:
        if not set(pair) <= set(names):
            raise CausalSpritesError(f"unknown factor in edge {pair}; factors: {', '.join(names)}")
    parents = {n: {p for p, c in directed if c == n} for n in names}
    topological_order(parents)  # raises on a cycle
    adjacent = {frozenset(e) for e in directed}

    def adj(a: str, b: str) -> bool:
        return frozenset((a, b)) in adjacent

    oriented: set[tuple[str, str]] = set()
    for child in names:
        for p, q in itertools.combinations(sorted(parents[child]), 2):
            if not adj(p, q):
                oriented |= {(p, child), (q, child)}
    undirected = {frozenset(e) for e in directed if e not in oriented}

    def into(n: str) -> set[str]:
        return {p for p, c in oriented if c == n}

    changed = True
    while changed:
        changed = False
        for edge in list(undirected):
            for a, b in itertools.permutations(sorted(edge)):
                r1 = any(not adj(c, b) for c in into(a))
                r2 = any((c, b) in oriented for c in names if (a, c) in oriented)
                r3 = any(
                    not adj(c, d) and frozenset((a, c)) in undirected
                    for c, d in itertools.combinations(sorted(into(b)), 2)
                    if frozenset((a, d)) in undirected
                )
                if r1 or r2 or r3:
                    oriented.add((a, b))
                    undirected.discard(edge)
                    changed = True
                    break
    cpdag: Cpdag = {}
    for a, b in oriented:
        key, flipped = _pair(a, b, names)
        cpdag[key] = "<-" if flipped else "->"
    for edge in undirected:
        a, b = sorted(edge, key=list(names).index)
        cpdag[(a, b)] = "--"
    return cpdag


def structural_hamming_distance(found: Cpdag, truth: Cpdag) -> int:
    """Pairs of factors whose edge differs between two CPDAGs: a missing or extra edge counts 1,
    and so does an edge present in both with another orientation (reversed, or directed in one
    and undirected in the other)."""
    return sum(found.get(pair) != truth.get(pair) for pair in set(found) | set(truth))


def pairwise_tests(
    labels: np.ndarray, names: Sequence[str], factors: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Marginal independence test of every pair of `factors` (default: all): Pearson chi-square
    p-value and Cramer's V (0: independent, 1: one factor determines the other) of the
    contingency table. Labels (N, K) of the factors `names`."""
    labels = _as_labels(labels, len(names))
    tests = []
    for a, b in itertools.combinations(names if factors is None else factors, 2):
        i, j = list(names).index(a), list(names).index(b)
        table = np.zeros((labels[:, i].max() + 1, labels[:, j].max() + 1))
        np.add.at(table, (labels[:, i], labels[:, j]), 1)
        table = table[table.sum(1) > 0][:, table.sum(0) > 0]  # unobserved classes carry no df
        if min(table.shape) < 2:
            p_value, v = 1.0, 0.0
        else:
            chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
            v = float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
        tests.append({"a": a, "b": b, "p_value": float(p_value), "cramers_v": v})
    return tests


def _as_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """(N, K) classes of K factors, or (N, K + 1) with a leading constant column (dSprites'
    color) -> (N, K) int64, checked."""
    array = np.asarray(labels)
    if array.ndim != 2 or array.shape[1] not in (count, count + 1):
        raise CausalSpritesError(f"labels must have shape (N, {count}), got {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and np.array_equal(array, np.round(array)):
        array = array.astype(np.int64)  # a dataset file stores classes as float64
    if not np.issubdtype(array.dtype, np.integer) or (array.size and array.min() < 0):
        raise CausalSpritesError("labels must be non-negative integer classes")
    return array[:, -count:].astype(np.int64)


def _run_pc(labels: np.ndarray, factors: Sequence[str], alpha: float, test: str) -> Cpdag:
    """PC's CPDAG over the columns (N, F) of the named factors (in factor order)."""
    # MIN_SAMPLES rows keep clear of causal-learn's one warning (more features than samples).
    graph = pc(
        labels, alpha, test, stable=True, show_progress=False, node_names=list(factors)
    ).G.graph
    cpdag: Cpdag = {}
    marks = {(-1, 1): "->", (1, -1): "<-", (-1, -1): "--", (1, 1): "<->"}
    for i, j in itertools.combinations(range(len(factors)), 2):
        mark = marks.get((int(graph[i, j]), int(graph[j, i])))
        if mark is not None:
            cpdag[(factors[i], factors[j])] = mark
    return cpdag


def edge_list(cpdag: Cpdag, names: Sequence[str]) -> list[dict[str, Any]]:
    """A CPDAG as DESIGN.md's `[{from, to, directed}]` (undirected edges in factor order)."""
    out = []
    order = list(names)
    for (a, b), mark in sorted(cpdag.items(), key=lambda kv: [order.index(n) for n in kv[0]]):
        source, target = (b, a) if mark == "<-" else (a, b)
        out.append({"from": source, "to": target, "directed": mark in ("->", "<-")})
    return out


def discover(
    labels: np.ndarray,
    truth: VariantSpec | Sequence[tuple[str, str]] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    test: Literal["chisq", "gsq"] = "chisq",
    max_samples: int | None = None,
    seed: int = 0,
    names: Sequence[str],
    factors: Sequence[str] | None = None,
) -> dict[str, Any]:
    """PC over factor classes (N, K) of the factors `names` (or (N, K + 1) with dSprites' color):
    `edges` [{from, to, directed}], `tests` [{a, b, p_value, cramers_v}], `shd` to the truth's
    CPDAG (None without a truth), plus `num_samples`, `factors`, `alpha`, `test`, `seconds`.
    `max_samples` draws a seeded subsample; `factors` restricts the search to some factors (a
    truth may not have edges to the others)."""
    start = time.perf_counter()
    labels = _as_labels(labels, len(names))
    factors = names if factors is None else factors
    unknown = [f for f in factors if f not in names]
    if unknown or len(set(factors)) < 2:
        raise CausalSpritesError(
            f"factors must name at least two of {', '.join(names)}; got {', '.join(factors)}"
        )
    chosen = [f for f in names if f in factors]
    if test not in ("chisq", "gsq"):
        raise CausalSpritesError(f"unknown test {test!r}: expected chisq or gsq")
    if not 0.0 < alpha < 1.0:
        raise CausalSpritesError(f"alpha must lie in (0, 1), got {alpha}")
    if max_samples is not None and len(labels) > max_samples:
        rows = np.random.default_rng(seed).choice(len(labels), max_samples, replace=False)
        labels = labels[np.sort(rows)]
    if len(labels) < MIN_SAMPLES:
        raise CausalSpritesError(f"discovery needs at least {MIN_SAMPLES} rows, got {len(labels)}")
    columns = [list(names).index(f) for f in chosen]
    found = _run_pc(labels[:, columns], chosen, alpha, test)
    result: dict[str, Any] = {
        "edges": edge_list(found, names),
        "tests": pairwise_tests(labels, names, chosen),
        "shd": None,
        "num_samples": len(labels),
        "factors": chosen,
        "labels": "given",
        "alpha": alpha,
        "test": test,
    }
    if truth is not None:
        true_edges = truth.edges if isinstance(truth, VariantSpec) else tuple(truth)
        outside = [e for e in true_edges if not set(e) <= set(chosen)]
        if outside:
            raise CausalSpritesError(
                f"the truth has the edge {outside[0][0]} -> {outside[0][1]} outside the factors "
                f"searched ({', '.join(chosen)})"
            )
        true_cpdag = cpdag_of_dag(true_edges, names)
        result["shd"] = structural_hamming_distance(found, true_cpdag)
        result["truth_edges"] = edge_list(true_cpdag, names)
    result["seconds"] = time.perf_counter() - start
    return result


def discover_file(
    path: Path | str | None = None,
    truth: VariantSpec | Sequence[tuple[str, str]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`discover` on the labels of a data file: a dataset file or dSprites' (default: the default
    dSprites data)."""
    data = load_data(path)
    return discover(data.factors(slice(None)), truth, names=data.schema.names, **options)


def discover_from_images(
    model: LabelInferrer,
    images: np.ndarray,
    truth: VariantSpec | Sequence[tuple[str, str]] | None = None,
    *,
    factors: Sequence[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """`discover` on the pixels alone: images (B, H, W), each one's factors drawn once from the
    posterior p(y | x). Drawing (not taking the mode) is what keeps symmetric sprites honest: a
    square at orientation k is drawn at k or at the turns that look the same, with their weights,
    and if the model is right the draws over all images follow the factors' true joint law
    (sum over x of p(y | x) p(x) = p(y)), so no edge appears that the data does not have. A mode,
    or any canonical orientation per shape, would tie orientation's law to the shape."""
    posterior = model.infer(images, top=DRAW_TOP)
    labels = posterior.sample(1, np.random.default_rng(seed))[0]
    names = model.schema.names
    result = discover(labels, truth, names=names, factors=factors, seed=seed, **options)
    stopped = int((~posterior.complete).sum())
    return {**result, "labels": "posterior", "num_stopped_on_budget": stopped}
