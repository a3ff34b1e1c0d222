"""Where the posterior search looks, for a schema of any dataset and for dSprites' hints."""

from __future__ import annotations

from causal_sprites.data.factors import SCHEMA
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.model.search import SearchSpace

GRID = Schema(
    name="grid",
    factors=(
        categorical("colour", ["red", "green", "blue"]),
        categorical("size", range(4), ordered=True),
        categorical("turn", range(6), cyclic=True),
    ),
    image_shape=(32, 32, 3),
)
NOTHING_LIKELY: list[list[int]] = [[], [], []]


def test_neighbours_of_ordered_factors_wrap_only_where_cyclic() -> None:
    space = SearchSpace.of(GRID)
    assert space.ordered == (1, 2) and space.cyclic == (2,)
    assert space.proposals((0, 0, 0), NOTHING_LIKELY) == {(0, 1, 0), (0, 0, 1), (0, 0, 5)}
    with_likely = space.proposals((0, 3, 2), [[2], [], [2]])
    assert with_likely == {(2, 3, 2), (0, 2, 2), (0, 3, 1), (0, 3, 3)}


def test_pairs_joint_and_the_last_resort() -> None:
    space = SearchSpace.of(GRID)
    pairs = space.pairs((0, 1, 0), NOTHING_LIKELY)
    assert (0, 3, 4) in pairs and (0, 0, 1) in pairs and all(t[0] == 0 for t in pairs)
    assert space.joint((0, 0, 0), [[1, 2], [0], [3, 4, 5, 0]]) == {
        (c, 0, t) for c in (1, 2) for t in (3, 4, 5)
    }
    widest = space.widest((1, 2, 3), NOTHING_LIKELY)
    assert len(widest) == 3 + 4 + 6 - 2 and (2, 2, 3) in widest and (1, 2, 0) in widest


def test_dsprites_proposes_the_turns_that_look_the_same() -> None:
    space = SearchSpace.of(SCHEMA)
    square = space.proposals((0, 5, 0, 16, 16), [[], [], [], [], []])
    assert {(0, 5, k, 16, 16) for k in (39, 1, 10, 29)} <= square  # 2 pi, neighbours, turns
    assert len(space.widest((2, 5, 3, 16, 16), [[]] * 5)) > 1000  # every pose nearby
