"""Discovery over continuous and mixed factors: each test picked by the kinds it involves and named
in the result; continuous chains (linear and not), a collider, a mixed chain and the pendulum's
graph recovered exactly from 2,000 rows drawn on the spot."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from causal_sprites.data.dataset import write_dataset
from causal_sprites.data.schema import Factor, Kind, Schema, categorical
from causal_sprites.discovery import DEFAULT_ALPHA, discover, discover_file, discover_from_images
from causal_sprites.discovery_tests import BINS, MAX_ONE_HOT, FactorTest, binned, choose_test
from causal_sprites.errors import CausalSpritesError

N = 2000
C: Kind = "continuous"
K: Kind = "categorical"
Sample = tuple[np.ndarray, list[Kind], list[tuple[str, str]]]


def linear_chain(rng: np.random.Generator) -> Sample:
    a = rng.normal(size=N)
    b = a + rng.normal(size=N)
    c = b + rng.normal(size=N)
    return np.column_stack([a, b, c]), [C, C, C], [("a", "b"), ("b", "c")]


def sine_chain(rng: np.random.Generator) -> Sample:
    """b = sin(a), c = b squared: c is uncorrelated with b, yet caused by it."""
    a = rng.uniform(-np.pi, np.pi, N)
    b = np.sin(a) + 0.3 * rng.normal(size=N)
    c = b**2 + 0.2 * rng.normal(size=N)
    return np.column_stack([a, b, c]), [C, C, C], [("a", "b"), ("b", "c")]


def collider(rng: np.random.Generator) -> Sample:
    a, b = rng.uniform(-2, 2, (2, N))
    c = np.sin(2 * a) + b**2 / 2 + 0.3 * rng.normal(size=N)
    return np.column_stack([a, b, c]), [C, C, C], [("a", "c"), ("b", "c")]


def mixed_chain(rng: np.random.Generator) -> Sample:
    """Categorical a (4 classes) -> continuous b -> categorical c (b's band, blurred)."""
    a = rng.integers(0, 4, N)
    b = np.array([0.0, 2.0, -1.0, 1.0])[a] + rng.normal(size=N)
    c = np.digitize(b + 0.5 * rng.normal(size=N), [-1.0, 0.5, 2.0])
    return np.column_stack([a, b, c]).astype(float), [K, C, K], [("a", "b"), ("b", "c")]


PENDULUM = ["pendulum_angle", "light_angle", "shadow_length", "shadow_position"]
PENDULUM_GRAPH = [(cause, effect) for cause in PENDULUM[:2] for effect in PENDULUM[2:]]


def pendulum(rng: np.random.Generator, num: int = N, noise: float = 0.2) -> np.ndarray:
    """CausalVAE's pendulum factors: the shadow on the ground y = -0.5 of the rod from the pivot
    (10, 10.5) to the ball's far point, cast along the light's angle, plus Gaussian noise."""
    theta, phi = rng.uniform(-36.0, 38.7, num), rng.uniform(54.0, 132.3, num)
    slope = np.tan(np.radians(phi))

    def ground(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        return (-0.5 - (y - x * slope)) / slope

    pivot = ground(10.0, 10.5)
    ball = ground(10 + 9.5 * np.sin(np.radians(theta)), 10.5 - 9.5 * np.cos(np.radians(theta)))
    length = np.maximum(3.0, np.abs(pivot - ball)) + noise * rng.normal(size=num)
    position = (pivot + ball) / 2 + noise * rng.normal(size=num)
    return np.column_stack([theta, phi, length, position])


def names_of(data: np.ndarray) -> list[str]:
    return ["a", "b", "c"][: data.shape[1]]


def by_pair(result: dict, given: tuple[str, ...] = ()) -> dict[tuple[str, str], dict]:
    """PC's tests with the conditioning set `given`, by pair."""
    return {(t["a"], t["b"]): t for t in result["ci_tests"] if tuple(t["given"]) == given}


@pytest.mark.parametrize("sample", [linear_chain, sine_chain])
def test_continuous_chains_are_recovered(sample: Callable[..., Sample]) -> None:
    data, kinds, truth = sample(np.random.default_rng(0))
    result = discover(data, truth, names=names_of(data), kinds=kinds)
    assert result["shd"] == 0, result["edges"]
    assert result["edges"] == [
        {"from": "a", "to": "b", "directed": False},
        {"from": "b", "to": "c", "directed": False},
    ]
    separating = by_pair(result, ("b",))[("a", "c")]
    assert separating["test"] == "rcit" and separating["p_value"] > DEFAULT_ALPHA
    assert {t["test"] for t in result["tests"]} == {"binned-chisq"}
    assert result["kinds"] == [C, C, C]


def test_binning_sees_a_dependence_correlation_misses() -> None:
    data, _, _ = sine_chain(np.random.default_rng(1))
    assert abs(np.corrcoef(data[:, 1], data[:, 2])[0, 1]) < 0.1  # Fisher-z's whole view
    tests = discover(data, names=names_of(data), kinds=[C, C, C])["tests"]
    assert tests[2]["a"] == "b" and tests[2]["b"] == "c" and tests[2]["p_value"] < 1e-50


def test_a_nonlinear_collider_is_oriented() -> None:
    data, kinds, truth = collider(np.random.default_rng(0))
    result = discover(data, truth, names=names_of(data), kinds=kinds)
    assert result["shd"] == 0
    assert result["edges"] == [
        {"from": "a", "to": "c", "directed": True},
        {"from": "b", "to": "c", "directed": True},
    ]
    assert by_pair(result)[("a", "b")]["p_value"] > 0.01


def test_a_mixed_chain_names_the_test_of_each_pair() -> None:
    data, kinds, truth = mixed_chain(np.random.default_rng(0))
    result = discover(data, truth, names=names_of(data), kinds=kinds)
    assert result["shd"] == 0 and len(result["edges"]) == 2
    marginal = {(t["a"], t["b"]): t["test"] for t in result["tests"]}
    assert marginal == {("a", "b"): "binned-chisq", ("a", "c"): "chisq", ("b", "c"): "binned-chisq"}
    assert {p: t["test"] for p, t in by_pair(result).items()} == marginal  # PC's order 0
    assert by_pair(result, ("b",))[("a", "c")]["test"] == "rcit"
    gsq = discover(data, truth, names=names_of(data), kinds=kinds, test="gsq")
    assert {t["test"] for t in gsq["ci_tests"]} == {"gsq", "binned-gsq", "rcit"}


def test_a_cause_of_many_classes_is_embedded_for_the_kernel_test() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, N)
    b = rng.uniform(-2, 2, 200)[a] + 0.5 * rng.normal(size=N)
    c = np.digitize(b + 0.5 * rng.normal(size=N), [-1.0, 0.5, 2.0])
    data = np.column_stack([a, b, c]).astype(float)
    result = discover(data, [("a", "b"), ("b", "c")], names=names_of(data), kinds=[K, C, K])
    assert result["shd"] == 0
    assert by_pair(result, ("b",))[("a", "c")]["p_value"] > DEFAULT_ALPHA
    features = FactorTest(data, [False, True, False], "chisq")._features([0])
    assert features.shape == (N, MAX_ONE_HOT)


def test_the_pendulum_graph_is_recovered_with_every_arrow() -> None:
    data = pendulum(np.random.default_rng(0))
    result = discover(data, PENDULUM_GRAPH, names=PENDULUM, kinds=[C] * 4)
    assert result["shd"] == 0
    found = {(e["from"], e["to"]) for e in result["edges"] if e["directed"]}
    assert found == set(PENDULUM_GRAPH) and len(result["edges"]) == 4
    length, position = PENDULUM[2:]
    shadows = by_pair(result, tuple(PENDULUM[:2]))[(length, position)]
    assert shadows["test"] == "rcit" and shadows["p_value"] > DEFAULT_ALPHA
    # The shadow's length hardly correlates with the pendulum's angle; binning sees it.
    assert abs(np.corrcoef(data[:, 0], data[:, 2])[0, 1]) < 0.1
    assert by_pair(result)[(PENDULUM[0], length)]["p_value"] < 1e-6


def test_tests_are_seeded_and_leave_numpys_generator_alone() -> None:
    data, kinds, _ = collider(np.random.default_rng(2))
    np.random.seed(7)
    first = discover(data, names=names_of(data), kinds=kinds, seed=3)
    after = np.random.random()
    np.random.seed(7)
    assert np.random.random() == after
    again = discover(data, names=names_of(data), kinds=kinds, seed=3)
    assert first["ci_tests"] == again["ci_tests"]


def test_binning_cuts_continuous_columns_into_quantiles_and_keeps_classes() -> None:
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(size=1000), rng.integers(0, 3, 1000)]).astype(float)
    data[:300, 0] = 5.0  # tied values share a bin
    codes = binned(data, [True, False])
    assert np.array_equal(codes[:, 1], data[:, 1]) and codes[:, 0].max() < BINS
    assert len(set(codes[:300, 0])) == 1 and np.bincount(codes[:, 0]).min() >= 80
    assert choose_test([True, False, False], 1, 2, [0], "chisq") == "rcit"
    assert choose_test([True, False, False], 0, 1, [2], "gsq") == "binned-gsq"


def _schema(kinds: list[Kind], data: np.ndarray) -> Schema:
    factors = [
        Factor(n, C, low=float(col.min()), high=float(col.max()))
        if kind == C
        else categorical(n, range(int(col.max()) + 1))
        for n, kind, col in zip(names_of(data), kinds, data.T, strict=True)
    ]
    return Schema("mixed", tuple(factors), (28, 28, 1))


def test_from_a_dataset_file_and_from_float_posterior_samples(tmp_path: Path) -> None:
    data, kinds, truth = mixed_chain(np.random.default_rng(3))
    schema = _schema(kinds, data)
    images = np.zeros((N, 28, 28), np.uint8)
    from_file = discover_file(write_dataset(tmp_path / "mixed.npz", images, data, schema), truth)
    assert from_file["shd"] == 0 and from_file["kinds"] == kinds

    class Drawn:
        """A certain posterior whose draws keep the continuous column's float values."""

        complete = np.ones(N, bool)

        def sample(self, num_samples: int, generator: np.random.Generator) -> np.ndarray:
            return np.repeat(data[None], num_samples, axis=0)

    class Reader:
        def __init__(self) -> None:
            self.schema = schema

        def infer(self, x: np.ndarray, top: int = 5) -> Drawn:
            return Drawn()

    from_images = discover_from_images(Reader(), images, truth)
    assert from_images["shd"] == 0 and from_images["labels"] == "posterior"
    assert from_images["ci_tests"] == from_file["ci_tests"]


def test_bad_input_fails_in_one_line() -> None:
    data, kinds, _ = mixed_chain(np.random.default_rng(0))
    with pytest.raises(CausalSpritesError, match=r"labels must have shape \(N, 4\)"):
        discover(data, names=["a", "b", "c", "d"], kinds=[*kinds, C])
    with pytest.raises(CausalSpritesError, match="2 kinds given for 3 factors"):
        discover(data, names=names_of(data), kinds=kinds[:2])
    with pytest.raises(CausalSpritesError, match="unknown factor kind 'ordinal'"):
        discover(data, names=names_of(data), kinds=[K, "ordinal", K])  # type: ignore[list-item]
    with pytest.raises(
        CausalSpritesError, match=r"factor b is categorical: .* non-negative integer classes, got"
    ):
        discover(data, names=names_of(data), kinds=[K, K, K])
    broken = data.copy()
    broken[5, 1] = np.nan
    with pytest.raises(
        CausalSpritesError, match=r"factor b is continuous: .* finite values, got nan"
    ):
        discover(broken, names=names_of(data), kinds=kinds)
