"""Conditional-independence tests for PC over factors of both kinds: each test X _||_ Y | S is
picked by the kinds of the factors it involves (`choose_test`).

- Nothing continuous: Pearson's chi-square (or G-square) on the contingency tables stratified by
  S, causal-learn's, exactly as PC on dSprites always ran ("chisq", "gsq").
- A continuous factor in the pair X, Y, none in S: the same test with each continuous factor cut
  into `BINS` quantile bins ("binned-chisq", "binned-gsq"). Sound, since functions of independent
  variables are independent, so it keeps its level; and it sees any dependence that moves mass
  between bins, monotone or not. Fisher-z would see only correlation, and the pendulum's shadow
  length is uncorrelated with the pendulum's angle (it grows with the swing either way); a
  conditional-Gaussian likelihood-ratio test of a mixed pair would see only linear effects.
- A continuous factor in S: stratifying by its bins would leave dependence inside each bin (in
  a -> b -> c, a and c stay dependent within a bin of b), so the test is the kernel test RCIT
  (Strobl, Zhang & Visweswaran 2019, causal-learn's): random Fourier features of X and Y are
  regressed on those of S and the residuals' cross-covariance is tested, nonlinear and O(n)
  (causal-learn's FastKCI took ~10 s a test at 2,000 rows). Categorical factors enter it
  one-hot; its random features are drawn from a seed per test.

Measured: the pendulum's graph (shadow noise 0.2 world units) comes back exactly from 1,000 rows
on, in about a second at 2,000 rows and 4 s at 20,000. Near-deterministic mechanisms are the
limit: at noise 0.05 and 2,000 rows, (pendulum angle, shadow position) nearly fix the light's
angle, the test then misses light_angle -> shadow_length in 2 of 5 draws (20,000 rows recover it);
at noise 0 (CausalVAE's grid: SHD 2) the shadows are functions of the angles, beyond any CI test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from causallearn.utils.cit import CIT, CIT_Base
from causallearn.utils.RCIT.RCIT import RCIT, RIT
from threadpoolctl import threadpool_limits

#: Quantile bins a continuous factor is cut into where a test stratifies: 10 x 10 cells hold ~20
#: rows each at 2,000 rows, enough for the chi-square reference, while fine enough to follow a
#: smooth dependence.
BINS = 10
#: The kernel test's name.
KERNEL = "rcit"
#: Classes up to which the kernel test takes a categorical factor one-hot; a factor with more
#: classes gets a seeded random Gaussian embedding of this many dimensions instead (its classes
#: stay distinct, nearly equidistant points, as one-hot ones are), so memory stays N x 64.
MAX_ONE_HOT = 64


def choose_test(
    continuous: Sequence[bool], x: int, y: int, given: Iterable[int], method: str
) -> str:
    """The test of columns x _||_ y | given: `method` (chisq or gsq) when none is continuous,
    `binned-<method>` when only x or y is, the kernel test when a conditioning column is."""
    if any(continuous[s] for s in given):
        return KERNEL
    return f"binned-{method}" if continuous[x] or continuous[y] else method


def binned(data: np.ndarray, continuous: Sequence[bool]) -> np.ndarray:
    """Columns (N, K) as int64 codes: a categorical column's classes as they are, a continuous
    column's quantile bin (0 to at most BINS - 1; tied values share a bin)."""
    codes = np.empty(data.shape, np.int64)
    for column, is_continuous in enumerate(continuous):
        values = data[:, column]
        if is_continuous:
            inner = np.quantile(values, np.linspace(0.0, 1.0, BINS + 1)[1:-1])
            cut = np.searchsorted(inner, values, side="right")
            codes[:, column] = np.unique(cut, return_inverse=True)[1]  # no empty bins
        else:
            codes[:, column] = values.astype(np.int64)
    return codes


class FactorTest(CIT_Base):
    """causal-learn's CI-test interface over factor columns (N, K) float64 (class indices or
    values): each call runs the test `choose_test` picks and records it in `records`
    {(x, y, given): (test, p-value)} (x < y, given sorted)."""

    def __init__(
        self, data: np.ndarray, continuous: Sequence[bool], method: str, seed: int = 0
    ) -> None:
        super().__init__(data)
        self.method = method  # causal-learn's CausalGraph.ci_test reads it
        self.continuous = [bool(c) for c in continuous]
        self.seed = seed
        self.tables = CIT(binned(data, self.continuous), method)
        self.records: dict[tuple[int, int, tuple[int, ...]], tuple[str, float]] = {}

    def __call__(self, X: int, Y: int, condition_set: Iterable[int] | None = None) -> float:
        """The p-value of X _||_ Y | condition_set (column indices)."""
        x, y = sorted((int(X), int(Y)))
        given = tuple(sorted(int(s) for s in condition_set or ()))
        if (x, y, given) not in self.records:
            name = choose_test(self.continuous, x, y, given, self.method)
            p = self._kernel(x, y, given) if name == KERNEL else self.tables(x, y, list(given))
            self.records[(x, y, given)] = (name, float(p))
        return self.records[(x, y, given)][1]

    def _features(self, columns: Iterable[int]) -> np.ndarray:
        """The columns as the kernel test takes them: continuous ones as they are, categorical
        ones one-hot over the classes present (or embedded: `MAX_ONE_HOT`); constant features
        dropped (they carry nothing)."""
        parts = []
        for column in columns:
            values = self.data[:, column]
            if self.continuous[column]:
                parts.append(values[:, None])
                continue
            inverse = np.unique(values, return_inverse=True)[1]
            count = inverse.max() + 1
            if count <= MAX_ONE_HOT:
                parts.append(np.eye(count)[inverse])
            else:
                rng = np.random.default_rng([self.seed, column])
                parts.append(rng.normal(size=(count, MAX_ONE_HOT))[inverse])
        features = np.concatenate(parts, axis=1)
        return features[:, features.std(0) > 0]

    def _kernel(self, x: int, y: int, given: tuple[int, ...]) -> float:
        """RCIT's p-value, its random features drawn from a seed of (seed, x, y, given), with
        NumPy's global generator (which causal-learn draws from) restored afterwards; on one BLAS
        thread, as its matrices are 100 x 100 (threads only contend: 10x slower on a busy box)."""
        fx, fy, fz = self._features([x]), self._features([y]), self._features(given)
        if not (fx.shape[1] and fy.shape[1]):
            return 1.0  # a constant is independent of anything
        state = np.random.get_state()
        np.random.seed(np.random.SeedSequence([self.seed, x, y, *given]).generate_state(1)[0])
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                if fz.shape[1]:
                    return float(RCIT().compute_pvalue(fx, fy, fz)[0])
                return float(RIT().compute_pvalue(fx, fy)[0])
        finally:
            np.random.set_state(state)
