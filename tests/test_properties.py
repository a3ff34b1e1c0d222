"""Property tests: arbitrary text given to our parsers raises nothing but CausalSpritesError."""

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from causal_sprites.config import RunConfig, parse_graph
from causal_sprites.data.factors import FACTORS, SIZES, parse_assignments, parse_factor_value
from causal_sprites.errors import CausalSpritesError

FACTOR_NAMES = st.sampled_from([*FACTORS, "color", "Shape", "", " posX"])
TEXT = st.text(max_size=30)


@given(FACTOR_NAMES, st.one_of(TEXT, st.integers()))
def test_factor_values_parse_or_fail_cleanly(name: str, value: str | int) -> None:
    try:
        index = parse_factor_value(name, value)
    except CausalSpritesError as error:
        assert "\n" not in str(error)
    else:
        assert 0 <= index < SIZES[FACTORS.index(name)]


@given(
    st.lists(st.one_of(TEXT, st.builds(lambda n, v: f"{n}={v}", FACTOR_NAMES, TEXT)), max_size=4)
)
def test_assignments_parse_or_fail_cleanly(items: list[str]) -> None:
    try:
        parsed = parse_assignments(items)
    except CausalSpritesError:
        return
    assert set(parsed) <= set(FACTORS)


@given(st.lists(st.sampled_from(["shape", "scale", "->", ",", " ", "x", "posX"]), max_size=12))
def test_graphs_parse_or_fail_cleanly(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        edges = parse_graph(text)
    except CausalSpritesError:
        return
    assert all(len(edge) == 2 and all(edge) for edge in edges)


@settings(max_examples=200)
@given(
    st.one_of(
        TEXT,
        st.recursive(
            st.none() | st.integers() | TEXT, lambda c: st.lists(c) | st.dictionaries(TEXT, c)
        ),
    )
)
def test_config_json_parses_or_fails_cleanly(payload: object) -> None:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    with contextlib.suppress(CausalSpritesError):
        RunConfig.from_json(text)
