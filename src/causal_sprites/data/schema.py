"""A dataset's factor schema: per factor its name, kind and classes (or range), and the images'
shape. Factors are data, as Hugging Face datasets' `ClassLabel` / `Value` features are: every
consumer asks the schema (of a run or a dataset) for names, sizes and class names, and none knows
which dataset it is (disentanglement_lib's `ground_truth_data.py`).

Two kinds: "categorical" (classes with names, and optionally a numeric value each, such as
dSprites' scale grid) and "continuous" (a real value with a range and a unit). The JSON form is
the dataset file's `schema` string and a run's `config.json["schema"]`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from causal_sprites.errors import CausalSpritesError

Kind = Literal["categorical", "continuous"]
#: Classes a categorical factor may have: at least 2 (one class is no factor), at most this.
MAX_CLASSES = 10_000
#: Names of the model's own sites, which no factor may take.
RESERVED_NAMES = frozenset({"x", "z"})
#: Image sides (pixels) the models are built for.
MIN_SIDE, MAX_SIDE = 28, 128


@dataclass(frozen=True)
class Factor:
    """One factor: a categorical one's class names (and numeric `values`, one per class, when
    the classes stand for numbers), or a continuous one's range [low, high] and unit. `ordered`
    classes lie on a line (neighbours look alike: the readout proposes them), `cyclic` ones on a
    circle (an angle: the last class neighbours the first)."""

    name: str
    kind: Kind = "categorical"
    classes: tuple[str, ...] = ()
    values: tuple[float, ...] | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    ordered: bool = False
    cyclic: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise CausalSpritesError(
                f"bad factor name {self.name!r}: use letters, digits and underscores"
            )
        if self.name in RESERVED_NAMES or self.name.startswith("u_"):
            raise CausalSpritesError(
                f"factor name {self.name!r} is taken by the model (the image x, the style z and "
                "the noise u_*): rename the factor"
            )
        if self.kind == "categorical":
            self._check_categorical()
        elif self.kind == "continuous":
            low, high = self.low, self.high
            if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
                raise CausalSpritesError(
                    f"continuous factor {self.name!r} needs a finite low and high"
                )
            if not low < high:
                raise CausalSpritesError(
                    f"continuous factor {self.name!r} needs low < high, got {self.low}, {self.high}"
                )
        else:
            raise CausalSpritesError(
                f"factor {self.name!r} has unknown kind {self.kind!r}; "
                "kinds are categorical and continuous"
            )

    def _check_categorical(self) -> None:
        count = len(self.classes)
        if count < 2:
            raise CausalSpritesError(
                f"factor {self.name!r} has {count} class{'es' if count != 1 else ''}; "
                "a factor needs at least 2"
            )
        if count > MAX_CLASSES:
            raise CausalSpritesError(
                f"factor {self.name!r} has {count:,} classes, more than {MAX_CLASSES:,}: "
                "declare it continuous"
            )
        if len(set(self.classes)) != count:
            raise CausalSpritesError(f"factor {self.name!r} names a class twice")
        if self.values is not None and len(self.values) != count:
            raise CausalSpritesError(
                f"factor {self.name!r} has {count} classes but {len(self.values)} values"
            )

    @property
    def size(self) -> int:
        """Number of classes (categorical factors only)."""
        if self.kind != "categorical":
            raise CausalSpritesError(f"factor {self.name!r} is continuous: it has no classes")
        return len(self.classes)

    @property
    def width(self) -> int:
        """Width of the factor's code for the networks: its classes one-hot, or one value."""
        return len(self.classes) if self.kind == "categorical" else 1

    def within_range(self, values: np.ndarray | float) -> bool:
        """Whether every value is finite and within the continuous factor's range, compared as
        the model holds values (float32): the readout's own value at an edge (132.3 is
        132.3000031 in float32) is in range, not an error."""
        assert self.low is not None and self.high is not None
        single = np.asarray(values, dtype=np.float32)
        low, high = np.float32(self.low), np.float32(self.high)
        return bool((np.isfinite(single) & (single >= low) & (single <= high)).all())

    def parse(self, text: str | int | float) -> int | float:
        """A value as the user writes it: a class by name, else by index; a continuous value
        as a number in the factor's unit, within its range."""
        text = str(text).strip()
        if self.kind == "continuous":
            try:
                value = float(text)
            except ValueError:
                raise CausalSpritesError(
                    f"bad value {text!r} for {self.name}: expected a number"
                ) from None
            if not self.within_range(value):
                raise CausalSpritesError(
                    f"value {text} for {self.name} is out of its range "
                    f"{self.low:g}..{self.high:g}{' ' + self.unit if self.unit else ''}"
                )
            return value
        if text in self.classes:
            return self.classes.index(text)
        lowered = [c.lower() for c in self.classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        try:
            index = int(text)
        except ValueError:
            raise CausalSpritesError(
                f"bad value {text!r} for {self.name}: expected an integer in "
                f"0..{self.size - 1}{self._class_hint()}"
            ) from None
        if not 0 <= index < self.size:
            if not self._class_hint():  # the classes are their indices
                raise CausalSpritesError(
                    f"value {index} for {self.name} is out of range 0..{self.size - 1}"
                )
            raise CausalSpritesError(
                f"value {index} for {self.name} is neither a class ({self._class_list()}) nor "
                f"a class index 0..{self.size - 1}"
            )
        return index

    def _class_hint(self) -> str:
        """` or one of a, b, c` when the classes have names other than their indices."""
        if self.classes == tuple(str(k) for k in range(self.size)):
            return ""
        return " or one of " + self._class_list()

    def _class_list(self) -> str:
        """The class names, the first few and the last where there are many."""
        if self.size <= 8:
            return ", ".join(self.classes)
        return f"{', '.join(self.classes[:5])}, ..., {self.classes[-1]} ({self.size} classes)"

    def text(self, value: float) -> str:
        """A stored value (a class index, or a continuous value) as the user reads it."""
        if self.kind == "continuous":
            return f"{value:.4g}"  # a caption's few digits; JSON keeps the full value
        return self.classes[int(value)]

    def to_json(self) -> dict[str, Any]:
        """The schema's JSON form of this factor."""
        if self.kind == "continuous":
            return {
                "name": self.name,
                "kind": self.kind,
                "low": self.low,
                "high": self.high,
                "unit": self.unit,
            }
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "classes": list(self.classes)}
        if self.values is not None:
            out["values"] = list(self.values)
        out.update({key: True for key in ("ordered", "cyclic") if getattr(self, key)})
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Factor:
        """A factor from its JSON form (one-line errors on anything malformed)."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise CausalSpritesError(f"schema: a factor must be an object with a name, got {raw!r}")
        known = {"name", "kind", "classes", "values", "low", "high", "unit", "ordered", "cyclic"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CausalSpritesError(f"schema: factor {raw['name']!r} has unknown keys {unknown}")
        try:
            values = raw.get("values")
            return cls(
                name=raw["name"],
                kind=raw.get("kind", "categorical"),
                classes=tuple(str(c) for c in raw.get("classes", ())),
                values=None if values is None else tuple(float(v) for v in values),
                low=None if raw.get("low") is None else float(raw["low"]),
                high=None if raw.get("high") is None else float(raw["high"]),
                unit=str(raw.get("unit", "")),
                ordered=bool(raw.get("ordered", False)),
                cyclic=bool(raw.get("cyclic", False)),
            )
        except (TypeError, ValueError) as error:
            raise CausalSpritesError(
                f"schema: factor {raw['name']!r} is malformed: {error}"
            ) from None


def categorical(
    name: str,
    classes: Sequence[str | int],
    values: Sequence[float] | None = None,
    ordered: bool = False,
    cyclic: bool = False,
) -> Factor:
    """A categorical factor; classes given as numbers are named by their text."""
    return Factor(
        name,
        "categorical",
        tuple(str(c) for c in classes),
        None if values is None else tuple(float(v) for v in values),
        ordered=ordered or cyclic,
        cyclic=cyclic,
    )


@dataclass(frozen=True)
class Schema:
    """The factors of a dataset, in column order, and its images' shape (H, W, C); `binary`
    images hold only 0 and 1 (dSprites), others 8-bit values."""

    name: str
    factors: tuple[Factor, ...]
    image_shape: tuple[int, int, int]
    binary: bool = False
    #: Extra keys of the JSON form kept as they are (recorded noise, a generated set's graph).
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.factors:
            raise CausalSpritesError(f"dataset {self.name!r} has no factors")
        names = [f.name for f in self.factors]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise CausalSpritesError(f"dataset {self.name!r} names factor {twice[0]!r} twice")
        height, width, channels = self.image_shape
        if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
            raise CausalSpritesError(
                f"images of {height}x{width} pixels: each side must be {MIN_SIDE} to {MAX_SIDE}"
            )
        if channels not in (1, 3):
            raise CausalSpritesError(f"images with {channels} channels: expected 1 (grey) or 3")
        if self.binary and channels != 1:
            raise CausalSpritesError("binary images have one channel")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.factors)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Classes per factor (categorical schemas only)."""
        return tuple(f.size for f in self.factors)

    @property
    def size_of(self) -> dict[str, int]:
        """{factor: classes} in factor order (categorical schemas only)."""
        return dict(zip(self.names, self.sizes, strict=True))

    @property
    def categorical(self) -> bool:
        """Whether every factor is categorical."""
        return all(f.kind == "categorical" for f in self.factors)

    @property
    def continuous(self) -> tuple[str, ...]:
        """The continuous factors' names, in factor order."""
        return tuple(f.name for f in self.factors if f.kind == "continuous")

    def factor(self, name: str) -> Factor:
        """The factor of that name (one-line error naming the factors otherwise)."""
        for f in self.factors:
            if f.name == name:
                return f
        raise CausalSpritesError(f"unknown factor {name!r}; factors are {', '.join(self.names)}")

    def index(self, name: str) -> int:
        """The column of a factor."""
        return self.names.index(self.factor(name).name)

    def parse_value(self, name: str, value: str | int | float) -> int | float:
        """A factor's value as the user writes it (`shape=heart`, `shape=2`, `angle=12.5`)."""
        return self.factor(name).parse(value)

    def parse_assignments(self, items: Sequence[str]) -> dict[str, int | float]:
        """`name=value` strings (the CLI's `--set`, `--do`, `--given`) as parsed values."""
        out: dict[str, int | float] = {}
        for item in items:
            name, sep, value = str(item).partition("=")
            name = name.strip()
            if not sep or not name or not value.strip():
                first = self.factors[0]
                example = f"{first.name}={first.text(0) if first.kind == 'categorical' else 0}"
                raise CausalSpritesError(
                    f"bad assignment {item!r}: expected factor=value, e.g. {example}"
                )
            if name in out:
                raise CausalSpritesError(f"factor {name!r} is given twice")
            out[name] = self.parse_value(name, value)
        return out

    def classes(self, assignments: Mapping[str, str | int | float]) -> dict[str, int]:
        """Class indices of a mapping of categorical factors to values (names or indices)."""
        for name in assignments:
            if self.factor(name).kind != "categorical":
                raise CausalSpritesError(f"factor {name!r} is continuous: give it as a value")
        return {name: int(self.parse_value(name, value)) for name, value in assignments.items()}

    def format(self, row: np.ndarray | Sequence[float]) -> dict[str, int | float]:
        """A factor row (K,) as {factor: class index or value}, for JSON output."""
        return {
            f.name: int(v) if f.kind == "categorical" else float(v)
            for f, v in zip(self.factors, np.asarray(row)[-len(self.factors) :], strict=True)
        }

    def caption(self, row: np.ndarray | Sequence[float]) -> str:
        """A factor row (K,) as a figure's short caption: each value as users read it, three to
        a line."""
        texts = [
            f.text(v)
            for f, v in zip(self.factors, np.asarray(row)[-len(self.factors) :], strict=True)
        ]
        return "\n".join(", ".join(texts[i : i + 3]) for i in range(0, len(texts), 3))

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the dataset file's `schema`, a run's `config.json["schema"]`)."""
        return {
            **self.extra,
            "name": self.name,
            "factors": [f.to_json() for f in self.factors],
            "image_shape": list(self.image_shape),
            "binary": self.binary,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, raw: Any) -> Schema:
        """A schema from its JSON form, a dict or its text (one-line errors)."""
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as error:
                raise CausalSpritesError(f"schema is not valid JSON: {error.msg}") from None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("factors"), list):
            raise CausalSpritesError("schema must be an object with a list of factors")
        shape = raw.get("image_shape")
        if not (
            isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) for s in shape)
        ):
            raise CausalSpritesError(f"schema: image_shape must be [H, W, C], got {shape!r}")
        extra = {
            k: v for k, v in raw.items() if k not in {"name", "factors", "image_shape", "binary"}
        }
        return cls(
            name=str(raw.get("name", "dataset")),
            factors=tuple(Factor.from_json(f) for f in raw["factors"]),
            image_shape=(shape[0], shape[1], shape[2]),
            binary=bool(raw.get("binary", False)),
            extra=extra,
        )
