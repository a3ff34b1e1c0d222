"""Where the posterior search over factor tuples looks (`model/readout.py`), for any schema: the
classifier's likely classes and the grid neighbours of ordered factors (wrapping for cyclic ones),
then wider and wider sets for a tuple that still explains its image badly.

A dataset may add its own knowledge of which tuples draw alike (`HINTS`, keyed by schema name):
dSprites proposes the turns of a symmetric sprite that look the same (so do its continuous
variants, `dsprites.turn_hint`), and as its last resort every shape, scale and orientation around
the position; any other dataset's last resort is every class
of every factor, one factor at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from causal_sprites.data import factors as dsprites
from causal_sprites.data.schema import Schema

Tuple = tuple[int, ...]
#: {column: classes drawing (nearly) the same image as the tuple's own}.
Equivalents = Callable[[Tuple], Mapping[int, Iterable[int]]]
#: The last resort's tuples around a tuple.
Wide = Callable[[Tuple], set[Tuple]]
#: Datasets that know more of their images than their schema says.
HINTS: dict[str, tuple[Equivalents, Wide]] = {
    dsprites.SCHEMA.name: (dsprites.equivalent_poses, dsprites.nearby_poses)
}
#: Classes per factor combined by the joint search (3 ** 5 = 243 tuples at most on dSprites).
JOINT_CLASSES = 3


def _no_equivalents(center: Tuple) -> Mapping[int, Iterable[int]]:
    return {}


@dataclass(frozen=True)
class SearchSpace:
    """The factor grid as the search sees it: `sizes` per factor, the `ordered` columns (grid
    neighbours proposed), the `cyclic` ones among them, and the dataset's hints."""

    sizes: tuple[int, ...]
    ordered: tuple[int, ...]
    cyclic: tuple[int, ...]
    equivalents: Equivalents = _no_equivalents
    wide: Wide | None = None

    @classmethod
    def of(cls, schema: Schema) -> SearchSpace:
        """The search space of a schema's categorical factors (its columns number them in
        order; continuous factors are refined apart), with its dataset's hints if it has any."""
        hinted = HINTS.get(schema.name)
        equivalents, wide = hinted or (dsprites.turn_hint(schema) or _no_equivalents, None)
        columns = list(enumerate(f for f in schema.factors if f.kind == "categorical"))
        return cls(
            tuple(f.size for _, f in columns),
            tuple(i for i, f in columns if f.ordered),
            tuple(i for i, f in columns if f.cyclic),
            equivalents,
            wide,
        )

    def _move(self, i: int, value: int) -> int | None:
        """Class `value` of column i on the grid (wrapped if cyclic), or None off the grid."""
        if i in self.cyclic:
            return value % self.sizes[i]
        return value if 0 <= value < self.sizes[i] else None

    def proposals(self, center: Tuple, likely: list[list[int]]) -> set[Tuple]:
        """Single-factor changes of a tuple: the classifier's likely classes, the grid
        neighbours and the classes the dataset knows draw alike."""
        out = set()
        hinted = self.equivalents(center)
        for i, size in enumerate(self.sizes):
            values = set(likely[i]) | set(hinted.get(i, ()))
            if i in self.ordered:
                moved = (self._move(i, center[i] + step) for step in (-1, 1))
                values |= {v for v in moved if v is not None}
            for v in values:
                if 0 <= v < size and v != center[i]:
                    out.add((*center[:i], v, *center[i + 1 :]))
        return out

    def joint(self, center: Tuple, likely: list[list[int]]) -> set[Tuple]:
        """Every combination of each factor's JOINT_CLASSES likeliest classes: the classifier's
        second guesses on several factors at once."""
        return set(itertools.product(*(classes[:JOINT_CLASSES] for classes in likely)))

    def pairs(self, center: Tuple, likely: list[list[int]]) -> set[Tuple]:
        """Changes of two factors at once (each to a value `proposals` would give it, or two
        grid steps away): the way out when one factor cannot improve until another moves too."""
        single = list(self.proposals(center, likely))
        for i in self.ordered:
            for step in (-2, 2):
                v = self._move(i, center[i] + step)
                if v is not None:
                    single.append((*center[:i], v, *center[i + 1 :]))
        changed = [next(i for i in range(len(center)) if t[i] != center[i]) for t in single]
        out = set()
        for a, (first, i) in enumerate(zip(single, changed, strict=True)):
            for second, j in zip(single[a + 1 :], changed[a + 1 :], strict=True):
                if i != j:
                    out.add(tuple(second[k] if k == j else first[k] for k in range(len(center))))
        return out

    def widest(self, center: Tuple, likely: list[list[int]]) -> set[Tuple]:
        """The last resort: the dataset's own, else every class of every factor, one factor at
        a time."""
        if self.wide is not None:
            return self.wide(center)
        return {
            (*center[:i], v, *center[i + 1 :])
            for i, size in enumerate(self.sizes)
            for v in range(size)
        }
