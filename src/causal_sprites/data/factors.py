"""dSprites factors: names, sizes, value grids, index <-> class tuple (index = classes . bases).

Follows the official file (Matthey et al. 2017) and disentanglement_lib's `dsprites.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Final

import numpy as np

from causal_sprites.data.schema import Schema, categorical

#: Every latent column of the official file, in its order (posY varies fastest).
ALL_FACTORS: Final = ("color", "shape", "scale", "orientation", "posX", "posY")
ALL_SIZES: Final = (1, 3, 6, 40, 32, 32)
#: The five varying factors the model uses (color is constant).
FACTORS: Final = ALL_FACTORS[1:]
SIZES: Final = ALL_SIZES[1:]
NUM_IMAGES: Final = int(np.prod(ALL_SIZES))
SHAPE_NAMES: Final = ("square", "ellipse", "heart")

VALUES: Final[dict[str, np.ndarray]] = {
    "color": np.array([1.0]),
    "shape": np.array([1.0, 2.0, 3.0]),
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),
    "posX": np.linspace(0.0, 1.0, 32),
    "posY": np.linspace(0.0, 1.0, 32),
}

#: The dSprites schema: what every consumer asks instead of the constants above.
SCHEMA: Final = Schema(
    name="dSprites",
    factors=(
        categorical("shape", SHAPE_NAMES, VALUES["shape"].tolist()),
        categorical("scale", range(6), VALUES["scale"].tolist(), ordered=True),
        categorical("orientation", range(40), VALUES["orientation"].tolist(), cyclic=True),
        categorical("posX", range(32), VALUES["posX"].tolist(), ordered=True),
        categorical("posY", range(32), VALUES["posY"].tolist(), ordered=True),
    ),
    image_shape=(64, 64, 1),
    binary=True,
    extra={
        # What the report's figures and the app show first (`figures.showcase`): the queries
        # and edits the docs and the pinned figures use, and a square in the middle.
        "showcase": {
            "condition": {"scale": 5},
            "intervene": {"posX": 31},
            "counterfactual": {"shape": "heart"},
            "edits": [{"shape": "heart"}, {"orientation": 15}],
            "traversal_steps": {"shape": 1, "scale": 1, "orientation": 4, "posX": 4, "posY": 4},
            "start": {"shape": "square", "scale": 5, "orientation": 0, "posX": 16, "posY": 16},
        }
    },
)

#: Rotational symmetry order of each shape (square, ellipse, heart).
SYMMETRY: Final = (4, 2, 1)


def _equivalent_orientations() -> list[list[list[int]]]:
    """[shape][k]: the orientation classes whose angle is k's turned by a multiple of the shape's
    symmetry angle, to the nearest grid points on either side. The grid step is 2 pi / 39, so a
    quarter turn is 9.75 steps: no two orientations of a square draw exactly the same image
    (a large square turned 10 steps overlaps itself with IoU 0.96), except 0 and 2 pi, which do
    for every shape."""
    step = float(VALUES["orientation"][1])
    last = ALL_SIZES[3] - 1
    table = []
    for order in SYMMETRY:
        rows = []
        for k in range(last + 1):
            near = {k}
            for turn in range(order):
                position = ((k * step + turn * 2 * np.pi / order) % (2 * np.pi)) / step
                near |= {int(np.floor(position + 1e-9)), int(np.ceil(position - 1e-9))}
            if near & {0, last}:
                near |= {0, last}
            rows.append(sorted(c for c in near if 0 <= c <= last))
        table.append(rows)
    return table


#: [shape][orientation]: the orientations that draw (nearly) the same sprite, itself included.
EQUIVALENT_ORIENTATIONS: Final = _equivalent_orientations()


def equivalent_poses(center: tuple[int, ...]) -> dict[int, list[int]]:
    """The readout's dSprites hint: {orientation's column: the turns of the tuple's shape that
    draw (nearly) its image}, proposed beside the grid neighbours."""
    return {2: EQUIVALENT_ORIENTATIONS[center[0]][center[2]]}


def turn_hint(schema: Schema) -> Callable[[tuple[int, ...]], dict[int, list[int]]] | None:
    """`equivalent_poses` for any schema holding dSprites' shape and orientation as classes (a
    continuous variant, whose other factors are values), on its categorical columns; None for
    a schema without them. Without it a square's posterior sat on one of its four look-alike
    turns, which tied the drawn orientation to the shape (an edge discovery then found)."""
    columns = [f for f in schema.factors if f.kind == "categorical"]
    shape, turn = SCHEMA.factor("shape"), SCHEMA.factor("orientation")
    if shape not in columns or turn not in columns:
        return None
    s, o = columns.index(shape), columns.index(turn)
    return lambda center: {o: EQUIVALENT_ORIENTATIONS[center[s]][center[o]]}


def nearby_poses(center: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The readout's dSprites last resort: every shape and scale, and every orientation, each
    with the position moved up to 2 steps both ways (a sprite misread in several factors at
    once; a turned heart's position is misread with its orientation)."""
    shape, scale, turn, x, y = center
    out: set[tuple[int, ...]] = set()
    for dx, dy in itertools.product(range(-2, 3), repeat=2):
        if not (0 <= x + dx < SIZES[3] and 0 <= y + dy < SIZES[4]):
            continue
        out |= {(shape, scale, k, x + dx, y + dy) for k in range(SIZES[2])}
        out |= {
            (s, c, turn, x + dx, y + dy)
            for s, c in itertools.product(range(SIZES[0]), range(SIZES[1]))
        }
    return out


#: Strides of the official order: index = classes (B, 6) @ BASES.
BASES: Final = np.array(
    [int(np.prod(ALL_SIZES[i + 1 :])) for i in range(len(ALL_SIZES))], dtype=np.int64
)


def classes_to_index(classes: np.ndarray) -> np.ndarray:
    """Dataset indices of class tuples: (B, 6) with color, or (B, 5) without."""
    classes = np.asarray(classes, dtype=np.int64)
    bases = BASES if classes.shape[-1] == 6 else BASES[1:]
    return classes @ bases


def index_to_classes(index: np.ndarray | int, with_color: bool = True) -> np.ndarray:
    """Class tuples (B, 6), or (B, 5) without color, of dataset indices."""
    index = np.asarray(index, dtype=np.int64)
    classes = (index[..., None] // BASES) % np.array(ALL_SIZES)
    return classes if with_color else classes[..., 1:]


def classes_to_values(classes: np.ndarray) -> np.ndarray:
    """Factor values (B, 6) of class tuples (B, 6), as in `latents_values`."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.stack([VALUES[name][classes[..., i]] for i, name in enumerate(ALL_FACTORS)], -1)


def parse_factor_value(name: str, value: str | int) -> int:
    """Class index of a factor value by index (`5`, `"5"`) or, for shape, by name (`heart`)."""
    return int(SCHEMA.parse_value(name, value))


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Parse `name=value` strings (the CLI's `--set`, `--do`, `--given`) into class indices."""
    return {name: int(value) for name, value in SCHEMA.parse_assignments(items).items()}


def normalize_assignments(assignments: Mapping[str, str | int]) -> dict[str, int]:
    """Class indices of a mapping of factor names to values (names or indices)."""
    return SCHEMA.classes(assignments)
