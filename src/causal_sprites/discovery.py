"""Causal discovery over a dataset's factors, categorical and continuous: the PC algorithm
(Spirtes, Glymour & Scheines 2000) of causal-learn (Zheng et al. 2024) and the structural Hamming
distance between CPDAGs (Tsamardinos, Brown & Aliferis 2006).

Between categorical factors (dSprites': up to 40 classes) the conditional independence test is
Pearson's chi-square on the stratified contingency tables: it needs no distributional assumption
(Fisher-z would assume linear-Gaussian data) and, unlike the G-square test, stays close to its
chi-square reference distribution when tables are sparse (40 x 32 x 32 cells against tens of
thousands of rows; Agresti 2013, sec. 3.2.4), so it does not invent edges there. `test="gsq"`
is available as a cross-check. Tests that involve a continuous factor are picked by the kinds
involved (`discovery_tests`): the same tables over quantile bins where nothing continuous is
conditioned on, the kernel test RCIT where something is; the result names each test PC ran.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from causallearn.utils.PCUtils import Meek, SkeletonDiscovery, UCSepset
from scipy import stats

from causal_sprites.data.load import load_data
from causal_sprites.data.schema import Kind, Schema
from causal_sprites.data.variants import VariantSpec
from causal_sprites.discovery_tests import FactorTest, binned, choose_test
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
    labels: np.ndarray,
    names: Sequence[str],
    factors: Sequence[str] | None = None,
    *,
    kinds: Sequence[Kind] | None = None,
) -> list[dict[str, Any]]:
    """Marginal independence test of every pair of `factors` (default: all): Pearson chi-square
    p-value and Cramer's V (0: independent, 1: one factor determines the other) of the
    contingency table, a continuous factor cut into quantile bins (`test` says which). Labels
    (N, K) of the factors `names` of the `kinds` (default: all categorical)."""
    kinds = _kinds(kinds, names)
    continuous = [kind == "continuous" for kind in kinds]
    codes = binned(_as_labels(labels, names, kinds), continuous)
    tests = []
    for a, b in itertools.combinations(names if factors is None else factors, 2):
        i, j = list(names).index(a), list(names).index(b)
        table = np.zeros((codes[:, i].max() + 1, codes[:, j].max() + 1))
        np.add.at(table, (codes[:, i], codes[:, j]), 1)
        table = table[table.sum(1) > 0][:, table.sum(0) > 0]  # unobserved classes carry no df
        if min(table.shape) < 2:
            p_value, v = 1.0, 0.0
        else:
            chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
            v = float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
        name = choose_test(continuous, i, j, (), "chisq")
        tests.append({"a": a, "b": b, "p_value": float(p_value), "cramers_v": v, "test": name})
    return tests


def _kinds(kinds: Sequence[Kind] | None, names: Sequence[str]) -> list[Kind]:
    """The factors' kinds, checked (default: all categorical)."""
    if kinds is None:
        return ["categorical"] * len(names)
    if len(kinds) != len(names):
        raise CausalSpritesError(
            f"{len(kinds)} kinds given for {len(names)} factors ({', '.join(names)})"
        )
    unknown = [k for k in kinds if k not in ("categorical", "continuous")]
    if unknown:
        raise CausalSpritesError(
            f"unknown factor kind {unknown[0]!r}: kinds are categorical and continuous"
        )
    return list(kinds)


def _as_labels(labels: np.ndarray, names: Sequence[str], kinds: Sequence[Kind]) -> np.ndarray:
    """(N, K) labels of the factors `names` (a categorical factor's class index, a continuous
    one's value), or (N, K + 1) with a leading constant column (dSprites' color) -> (N, K)
    float64, checked: classes non-negative integers, values finite."""
    array = np.asarray(labels)
    count = len(names)
    if array.ndim != 2 or array.shape[1] not in (count, count + 1):
        raise CausalSpritesError(f"labels must have shape (N, {count}), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CausalSpritesError(f"labels must be numbers, got {array.dtype}")
    array = array[:, -count:].astype(np.float64)
    for column, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        values = array[:, column]
        bad = ~np.isfinite(values)
        if kind == "categorical":
            bad |= (values < 0) | (values != np.round(values))
        if bad.any():
            expected = "non-negative integer classes" if kind == "categorical" else "finite values"
            raise CausalSpritesError(
                f"factor {name} is {kind}: its labels must be {expected}, "
                f"got {values[bad][0]:g} in row {int(np.argmax(bad))}"
            )
    return array


def _run_pc(
    labels: np.ndarray,
    factors: Sequence[str],
    continuous: Sequence[bool],
    alpha: float,
    test: str,
    seed: int,
) -> tuple[Cpdag, list[dict[str, Any]]]:
    """PC's CPDAG over the columns (N, F) of the named factors (in factor order), and every test
    it ran: {a, b, given, test, p_value}. The steps of causal-learn's `pc` (stable skeleton,
    colliders from the separating sets with existing ones kept, Meek's rules) with our test."""
    tester = FactorTest(labels, continuous, test, seed)
    skeleton = SkeletonDiscovery.skeleton_discovery(
        labels, alpha, tester, stable=True, show_progress=False, node_names=list(factors)
    )
    graph = Meek.meek(UCSepset.uc_sepset(skeleton, 2)).G.graph
    cpdag: Cpdag = {}
    marks = {(-1, 1): "->", (1, -1): "<-", (-1, -1): "--", (1, 1): "<->"}
    for i, j in itertools.combinations(range(len(factors)), 2):
        mark = marks.get((int(graph[i, j]), int(graph[j, i])))
        if mark is not None:
            cpdag[(factors[i], factors[j])] = mark
    ran = [
        {
            "a": factors[x],
            "b": factors[y],
            "given": [factors[s] for s in given],
            "test": name,
            "p_value": p_value,
        }
        for (x, y, given), (name, p_value) in tester.records.items()
    ]
    return cpdag, ran


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
    kinds: Sequence[Kind] | None = None,
) -> dict[str, Any]:
    """PC over factor labels (N, K) of the factors `names` (or (N, K + 1) with dSprites' color)
    of the `kinds` (default: all categorical; a class index or a value per factor): `edges`
    [{from, to, directed}], `tests` [{a, b, p_value, cramers_v, test}], `ci_tests` (every test
    PC ran: {a, b, given, test, p_value}), `shd` to the truth's CPDAG (None without a truth),
    plus `num_samples`, `factors`, `kinds`, `alpha`, `test` (the categorical one), `seconds`.
    `max_samples` draws a seeded subsample (the seed also draws the kernel test's features);
    `factors` restricts the search to some factors (a truth may not have edges to the others)."""
    start = time.perf_counter()
    kinds = _kinds(kinds, names)
    labels = _as_labels(labels, names, kinds)
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
    continuous = [kinds[c] == "continuous" for c in columns]
    found, ran = _run_pc(labels[:, columns], chosen, continuous, alpha, test, seed)
    result: dict[str, Any] = {
        "edges": edge_list(found, names),
        "tests": pairwise_tests(labels, names, chosen, kinds=kinds),
        "ci_tests": ran,
        "shd": None,
        "num_samples": len(labels),
        "factors": chosen,
        "kinds": [kinds[c] for c in columns],
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
    """`discover` on the labels of a data file (a dataset file or dSprites'; default: the
    default dSprites data), each factor tested as the file's schema declares its kind."""
    data = load_data(path)
    schema = data.schema
    kinds = [f.kind for f in schema.factors]
    return discover(data.factors(slice(None)), truth, names=schema.names, kinds=kinds, **options)


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
    or any canonical orientation per shape, would tie orientation's law to the shape.
    Continuous factors keep their drawn values; the kinds are the model's schema's."""
    posterior = model.infer(images, top=DRAW_TOP)
    labels = posterior.sample(1, np.random.default_rng(seed))[0]
    schema = model.schema
    kinds = [f.kind for f in schema.factors]
    result = discover(
        labels, truth, names=schema.names, factors=factors, seed=seed, kinds=kinds, **options
    )
    stopped = int((~posterior.complete).sum())
    return {**result, "labels": "posterior", "num_stopped_on_budget": stopped}
