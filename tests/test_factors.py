"""Factor grids and index <-> class-tuple maps."""

import numpy as np
import pytest

from causal_sprites.data import factors
from causal_sprites.errors import CausalSpritesError


def test_grids_match_the_official_file() -> None:
    assert factors.ALL_SIZES == (1, 3, 6, 40, 32, 32)
    assert factors.NUM_IMAGES == 737_280
    np.testing.assert_allclose(factors.VALUES["scale"], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert factors.VALUES["orientation"][-1] == pytest.approx(2 * np.pi)
    assert factors.VALUES["posX"][31] == 1.0
    assert list(factors.BASES) == [737_280, 245_760, 40_960, 1024, 32, 1]


def test_index_round_trip_over_every_index() -> None:
    index = np.arange(factors.NUM_IMAGES)
    classes = factors.index_to_classes(index)
    assert classes.shape == (factors.NUM_IMAGES, 6)
    np.testing.assert_array_equal(factors.classes_to_index(classes), index)
    np.testing.assert_array_equal(factors.classes_to_index(classes[:, 1:]), index)
    # posY varies fastest, then posX.
    np.testing.assert_array_equal(classes[:33, 5], [*range(32), 0])
    assert classes[32, 4] == 1


def test_values_of_classes() -> None:
    values = factors.classes_to_values(np.array([[0, 2, 5, 39, 31, 0]]))
    np.testing.assert_allclose(values, [[1.0, 3.0, 1.0, 2 * np.pi, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("name", "text", "index"),
    [("shape", "heart", 2), ("shape", "Square", 0), ("shape", "1", 1), ("scale", " 5", 5)],
)
def test_parse_factor_value(name: str, text: str, index: int) -> None:
    assert factors.parse_factor_value(name, text) == index


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("shape", "circle", "bad value 'circle' for shape"),
        ("scale", "6", "out of range 0..5"),
        ("posX", "-1", "out of range 0..31"),
        ("colour", "0", "unknown factor 'colour'"),
        ("orientation", "1.5", "expected an integer in 0..39"),
    ],
)
def test_parse_factor_value_rejects_bad_values(name: str, text: str, message: str) -> None:
    with pytest.raises(CausalSpritesError, match=message):
        factors.parse_factor_value(name, text)


def test_parse_assignments() -> None:
    assert factors.parse_assignments(["shape=heart", "orientation=10"]) == {
        "shape": 2,
        "orientation": 10,
    }
    for bad in (["shape"], ["=2"], ["shape="], ["shape=1", "shape=2"]):
        with pytest.raises(CausalSpritesError):
            factors.parse_assignments(bad)
