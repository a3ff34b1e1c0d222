"""The report, figures and app take everything from the run's schema: dSprites' showcase comes
from its schema's hints (the queries and edits the pinned figures use), any other schema gets a
generic choice, and a continuous factor gets a range, a unit, a slider and parsed values."""

from __future__ import annotations

import numpy as np
import pytest

from causal_sprites.app_text import (
    Requests,
    draws_sprites,
    factor_table,
    upload_help,
    value_choices,
    value_text,
)
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.errors import CausalSpritesError
from causal_sprites.figures import (
    edit_panels,
    query_titles,
    standard_queries,
    start_values,
    sweep,
)
from causal_sprites.report import data_summary

DSPRITES = DSprites.schema
ANGLE = Factor("angle", "continuous", low=-40.0, high=44.0, unit="degrees")
#: A schema with a continuous factor beside a categorical one (a pendulum and its ball's hue).
MIXED = Schema(
    name="pendulum",
    factors=(ANGLE, categorical("hue", ["red", "blue"])),
    image_shape=(32, 32, 3),
)
CONTINUOUS = Schema(name="angles", factors=(ANGLE,), image_shape=(32, 32, 1))


def mixed_data() -> Dataset:
    """Four images whose first pixel tells them apart; (angle, hue) rows."""
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = [10, 20, 30, 40]
    factors = np.array([[-30.0, 0], [12.0, 0], [12.5, 1], [40.0, 1]])
    return Dataset(MIXED, images, factors)


def test_dsprites_keeps_its_showcase_from_its_schema_hints() -> None:
    queries = standard_queries(DSPRITES)
    assert (queries.condition, queries.intervene) == ({"scale": 5}, {"posX": 31})
    assert (queries.counterfactual, queries.value) == ("shape", 2)
    assert query_titles(DSPRITES) == {
        "condition": "scale = 5",
        "intervene": "do(posX = 31)",
        "counterfactual": "do(shape = heart)",
    }
    assert edit_panels(DSPRITES, np.array([0, 5, 5, 10, 20])) == [
        ("shape=heart", {"shape": 2}),
        ("+ orientation=15", {"shape": 2, "orientation": 15}),
    ]
    assert start_values(DSPRITES) == {"shape": 0, "scale": 5, "orientation": 0, "posX": 16,
                                      "posY": 16}  # fmt: skip
    np.testing.assert_array_equal(sweep(DSPRITES.factor("orientation"), 4), np.arange(0, 40, 4))
    assert Schema.from_json(DSPRITES.dumps()) == DSPRITES  # the hints are plain JSON


def test_other_schemas_get_generic_queries_continuous_ones_within_the_range() -> None:
    hue, side = categorical("hue", ["red", "green", "blue"]), categorical("side", [6, 10, 14])
    squares = Schema("squares", (hue, side), (32, 48, 3))
    assert query_titles(squares) == {
        "condition": "hue = blue",
        "intervene": "do(hue = red)",
        "counterfactual": "do(hue = another class)",
    }
    queries = standard_queries(MIXED)  # the categorical factor first
    assert queries.condition == {"hue": 1} and queries.value is None
    assert query_titles(CONTINUOUS) == {
        "condition": "angle = 23 ± 0.84 degrees",
        "intervene": "do(angle = -19 degrees)",
        "counterfactual": "do(angle = 23 degrees)",
    }
    np.testing.assert_allclose(sweep(ANGLE), np.linspace(-40, 44, 8))
    assert edit_panels(MIXED, np.array([30.0, 1])) == [("hue=red", {"hue": 0})]  # categorical
    assert edit_panels(squares, np.array([2, 2])) == [
        ("hue=red", {"hue": 0}),
        ("+ side=6", {"hue": 0, "side": 0}),
    ]
    assert start_values(MIXED, mixed_data()) == {"angle": -30.0, "hue": 0}
    assert start_values(MIXED) == {"angle": -40.0, "hue": 0}


@pytest.mark.parametrize(
    ("showcase", "message"),
    [
        ({"conditions": {}}, "showcase must be an object with keys among condition"),
        ({"condition": {"size": 1}, "intervene": {"hue": 0}, "counterfactual": {"hue": 1}},
         "unknown factor 'size'; factors are angle, hue"),
        ({"condition": {"hue": 1}, "intervene": {"hue": 0},
          "counterfactual": {"hue": 1, "angle": 3}}, "the showcase counterfactual sets one factor"),
        ({"condition": {"angle": 90}, "intervene": {"hue": 0}, "counterfactual": {"hue": 1}},
         "value 90 for angle is out of its range -40..44 degrees"),
        ({"condition": {}, "intervene": {"hue": 0}, "counterfactual": {"hue": 1}},
         "a showcase query must name factors"),
    ],
)  # fmt: skip
def test_bad_showcase_hints_are_refused_in_one_line(showcase: dict, message: str) -> None:
    schema = Schema.from_json({**MIXED.to_json(), "showcase": showcase})
    with pytest.raises(CausalSpritesError, match=message):
        standard_queries(schema)


def test_the_data_paragraph_lists_the_schema_s_factors() -> None:
    assert data_summary(mixed_data()) == (
        "pendulum: 4 colour images of 32x32 pixels (height x width); angle (-40..44 degrees); "
        "hue (2: red, blue)."
    )


def test_app_text_shows_and_parses_continuous_values() -> None:
    assert value_choices("angle", MIXED) == ["-40", "-19", "2", "23", "44"]
    assert value_choices("hue", MIXED) == ["red", "blue"]
    assert value_text("angle", 12.5, MIXED) == "12.5 degrees"
    assert value_text("shape", 2, DSPRITES) == "heart (2)"
    assert value_text("scale", 5, DSPRITES) == "5"
    table = factor_table(np.array([12.5, 0.0]), np.array([30.0, 0.0]), True, MIXED)
    assert "| angle | 12.5 degrees | 30 degrees **(changed)** |" in table
    assert "| hue | red (0) | red (0) |" in table
    requests = Requests(MIXED, mixed_data())
    image, values = requests.choose("factors", ["12.4", "blue"], 0, None)
    assert image[0, 0, 0] == 30 and values.dtype == np.float64  # the nearest blue one: 12.5
    np.testing.assert_array_equal(values, [12.5, 1.0])  # the row's own values
    _, by_index = requests.choose("dataset index", [], 3, None)
    np.testing.assert_array_equal(by_index, [40.0, 1.0])
    assert requests.parse(["30", "keep"], "keep") == {"angle": 30.0}
    assert requests.parse([None, "blue"], "keep") == {"hue": 1}
    with pytest.raises(CausalSpritesError, match="value 50 for angle is out of its range"):
        requests.parse(["50", "keep"], "keep")
    with pytest.raises(CausalSpritesError, match="bad value 'steep' for angle: expected a number"):
        requests.parse(["steep", "keep"], "keep")
    only_red = Dataset(MIXED, mixed_data().images([0, 1]), mixed_data().factors([0, 1]))
    with pytest.raises(CausalSpritesError, match=r"^no image with hue=blue \(1\) in the data$"):
        Requests(MIXED, only_red).choose("factors", ["0", "blue"], 0, None)


def test_the_generator_serves_dsprites_runs_whatever_hints_they_recorded() -> None:
    recorded = Schema.from_json({k: v for k, v in DSPRITES.to_json().items() if k != "showcase"})
    assert recorded != DSPRITES and draws_sprites(recorded) and draws_sprites(DSPRITES)
    assert Requests(recorded).num_images == 737_280
    assert not draws_sprites(MIXED)
    with pytest.raises(CausalSpritesError, match="the app of a run on pendulum needs its data"):
        Requests(MIXED)
    assert upload_help(DSPRITES).startswith(
        "A black-and-white PNG of 64x64 pixels (height x width), pixels 0/255 or 0/1, like"
    )
    assert "Other sizes or gray levels are refused" in upload_help(DSPRITES)
    assert upload_help(MIXED).startswith("A colour PNG of 32x32 pixels (height x width) like")
    assert "a grey picture is taken as colour, an alpha channel only where" in upload_help(MIXED)


def test_app_controls_follow_each_factor_s_kind() -> None:
    gr = pytest.importorskip("gradio")
    from causal_sprites.app import factor_control, value_menu

    start = start_values(DSPRITES)
    shape, scale = (factor_control(DSPRITES.factor(n), start[n]) for n in ("shape", "scale"))
    assert isinstance(shape, gr.Dropdown) and shape.value == "square"
    assert [c[0] for c in shape.choices] == ["square", "ellipse", "heart"]
    assert isinstance(scale, gr.Slider) and (scale.minimum, scale.maximum) == (0, 5)
    assert (scale.value, scale.step, scale.label, scale.elem_id) == (5, 1, "scale", "f-scale")
    angle = factor_control(ANGLE, 12.5)
    assert isinstance(angle, gr.Slider) and (angle.minimum, angle.maximum) == (-40.0, 44.0)
    assert (angle.value, angle.step, angle.label) == (12.5, 0.1, "angle (degrees)")
    menu = value_menu(ANGLE, "keep", "do({})", MIXED, elem_id="do-angle")
    assert [c[0] for c in menu.choices] == ["keep", "-40", "-19", "2", "23", "44"]
    assert menu.allow_custom_value and menu.label == "do(angle) (degrees)"
    hue = value_menu(MIXED.factor("hue"), "any", "{}", MIXED)
    assert not hue.allow_custom_value and [c[0] for c in hue.choices] == ["any", "red", "blue"]
