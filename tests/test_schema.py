"""The factor schema: JSON round trips, values as users write them, and one-line refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from causal_sprites.config import RunConfig
from causal_sprites.data.factors import SCHEMA
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.inputs import as_labels

COLOUR = Schema(
    name="squares",
    factors=(
        categorical("hue", ["red", "green", "blue"]),
        categorical("size", [2, 4, 8], values=[2.0, 4.0, 8.0], ordered=True),
        Factor("angle", "continuous", low=-30.0, high=30.0, unit="degrees"),
    ),
    image_shape=(32, 48, 3),
)


def test_json_round_trips_keep_every_field() -> None:
    for schema in (SCHEMA, COLOUR):
        assert Schema.from_json(schema.dumps()) == schema
        assert Schema.from_json(json.loads(schema.dumps())) == schema
    assert SCHEMA.names == ("shape", "scale", "orientation", "posX", "posY")
    assert SCHEMA.sizes == (3, 6, 40, 32, 32) and SCHEMA.binary
    assert SCHEMA.factor("orientation").cyclic and not SCHEMA.factor("shape").ordered
    assert SCHEMA.factor("scale").values == pytest.approx(tuple(np.linspace(0.5, 1, 6)))
    extra = Schema.from_json({**COLOUR.to_json(), "noise_shadow": "recorded"})
    assert extra.extra == {"noise_shadow": "recorded"} and extra.to_json()["noise_shadow"]


def test_values_by_name_index_or_number() -> None:
    assert COLOUR.parse_value("hue", "Blue") == 2 and COLOUR.parse_value("hue", 1) == 1
    assert COLOUR.parse_value("size", "8") == 2  # a class's name before its index
    cased = categorical("letter", ["A", "a"])
    assert cased.parse("a") == 1 and cased.parse("A") == 0  # exact names before any case
    assert hash(COLOUR) == hash(Schema.from_json(COLOUR.dumps()))
    assert COLOUR.parse_value("angle", "12.5") == 12.5
    assert COLOUR.parse_assignments(["hue=red", "angle=-3"]) == {"hue": 0, "angle": -3.0}
    assert COLOUR.format(np.array([2.0, 1.0, 12.5])) == {"hue": 2, "size": 1, "angle": 12.5}
    assert SCHEMA.classes({"shape": "heart", "posX": "31"}) == {"shape": 2, "posX": 31}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: COLOUR.parse_value("hue", "purple"), "expected an integer in 0..2 or one of red"),
        (lambda: COLOUR.parse_value("hue", 3), "neither a class (red, green, blue) nor a class"),
        (lambda: COLOUR.parse_value("angle", "31"), "out of its range -30..30 degrees"),
        (lambda: COLOUR.parse_value("angle", "steep"), "expected a number"),
        (lambda: COLOUR.parse_value("colour", 1), "unknown factor 'colour'"),
        (lambda: COLOUR.parse_assignments(["hue"]), "expected factor=value, e.g. hue=red"),
        (lambda: COLOUR.parse_assignments(["hue=1", "hue=2"]), "given twice"),
        (lambda: COLOUR.classes({"angle": 3}), "'angle' is continuous"),
        (lambda: categorical("flat", ["only"]), "has 1 class; a factor needs at least 2"),
        (lambda: categorical("many", range(10_001)), "more than 10,000: declare it continuous"),
        (lambda: categorical("twice", ["a", "a"]), "names a class twice"),
        (lambda: Factor("bad name"), "bad factor name"),
        (lambda: categorical("x", ["a", "b"]), "'x' is taken by the model"),
        (lambda: categorical("u_hue", ["a", "b"]), "'u_hue' is taken by the model"),
        (lambda: Factor("angle", "continuous", low=1.0, high=1.0), "needs low < high"),
        (lambda: Factor("angle", "continuous", low=0.0, high=math.inf), "a finite low and high"),
        (lambda: Schema("s", COLOUR.factors, (32, 32, 3), binary=True), "one channel"),
        (lambda: Factor("f", "ordinal", ("a", "b")), "unknown kind 'ordinal'"),
        (lambda: Schema("s", (), (32, 32, 1)), "has no factors"),
        (lambda: Schema("s", COLOUR.factors[:1] * 2, (32, 32, 1)), "names factor 'hue' twice"),
        (lambda: Schema("s", COLOUR.factors, (16, 32, 1)), "each side must be 28 to 128"),
        (lambda: Schema("s", COLOUR.factors, (32, 32, 4)), "4 channels"),
        (lambda: Schema.from_json("{not json"), "schema is not valid JSON"),
        (lambda: Schema.from_json({"factors": []}), "image_shape must be [H, W, C]"),
        (
            lambda: Schema.from_json(
                {"factors": [{"name": "a", "size": 3}], "image_shape": [32, 32, 1]}
            ),
            "unknown keys",
        ),
    ],
)
def test_bad_schemas_and_values_are_refused_in_one_line(call: object, message: str) -> None:
    with pytest.raises(CausalSpritesError, match=None) as caught:
        call()  # type: ignore[operator]
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_run_config_carries_its_schema() -> None:
    assert RunConfig().factor_schema == SCHEMA  # runs from before schemas: dSprites
    config = RunConfig(schema=COLOUR.to_json())
    assert RunConfig.from_json(config.to_json()).factor_schema == COLOUR
    with pytest.raises(CausalSpritesError, match="each side must be 28 to 128"):
        RunConfig.from_json(
            RunConfig(schema={**COLOUR.to_json(), "image_shape": [8, 8, 1]}).to_json()
        )


def test_a_value_at_the_range_edge_in_float32_is_in_range() -> None:
    """The readout returns float32 values: its value at the top of the pendulum's light_angle
    range (132.3, as float32 132.3000031) once made a counterfactual from read labels fail."""
    schema = Schema(
        name="edge",
        factors=(Factor("angle", kind="continuous", low=54.0, high=132.3),),
        image_shape=(32, 32, 3),
    )
    edge = np.array([[np.float32(132.3)], [np.float32(54.0)]])
    np.testing.assert_array_equal(as_labels(edge, 2, schema).numpy(), edge.astype(np.float32))
    with pytest.raises(CausalSpritesError, match=r"out of its range 54\.\.132\.3"):
        as_labels(np.array([[132.31]]), 1, schema)
