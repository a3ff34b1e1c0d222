"""A counterfactual model written outside the package, as a user would write one for
`causal-sprites benchmark --model tests.user_model:make`: it moves the sprite by the change asked
of posX and posY (a position class is about a pixel) and leaves every other factor as it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class ShiftSprite:
    """Counterfactuals by shifting pixels: do(posX) and do(posY) only, the rest ignored."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        out = np.array(images, dtype=np.uint8, copy=True)
        for axis, name in ((2, "posX"), (1, "posY")):  # posX moves columns, posY rows
            if name not in do:
                continue
            shift = np.asarray(do[name]) - factors[:, self.names.index(name)]
            for i, pixels in enumerate(np.rint(shift * 32 / 31).astype(int)):
                out[i] = np.roll(out[i], pixels, axis=axis - 1)
        return out


def make(schema: Any, device: str) -> ShiftSprite:
    """The factory `benchmark` calls with the dataset's schema and the device."""
    return ShiftSprite(list(schema.names))


def broken(schema: Any, device: str) -> object:
    """Bad-input tests: a factory returning something without `counterfactual`."""
    return object()


def raising(schema: Any, device: str) -> object:
    """Bad-input tests: a factory that raises."""
    raise RuntimeError("weights not found")


class Malformed:
    """Bad-input tests: answers of half the height, or float NaN (each reported as failed)."""

    def __init__(self, how: str) -> None:
        self.how = how

    def counterfactual(
        self, images: np.ndarray, factors: np.ndarray, do: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        if self.how == "half":
            return np.asarray(images)[:, ::2]
        return np.full(np.shape(images), np.nan)


def half(schema: Any, device: str) -> Malformed:
    return Malformed("half")


def nan(schema: Any, device: str) -> Malformed:
    return Malformed("nan")
