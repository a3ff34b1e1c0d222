"""What the web app reads and writes: requests (an image by its factors, its index in the data or
an upload checked against the run's images; factor values from the menus), factor values as the
user reads them (by the run's schema: a class name, or a continuous factor's value in its unit),
and the Markdown beside each counterfactual (the factor table, an upload's candidates, a
counterfactual's distribution)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import NUM_IMAGES, index_to_classes
from causal_sprites.data.pictures import binary_pixels
from causal_sprites.data.render import render
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.figures import bounds, factor_array
from causal_sprites.model.readout import FactorPosterior

#: Noise draws behind a counterfactual's distribution in the app.
DISTRIBUTION_SAMPLES = 500
#: Dropdown entry for "no intervention on this factor".
KEEP = "keep"
#: Values a continuous factor's menu offers (evenly over its range; any other may be typed).
CONTINUOUS_CHOICES = 5


def draws_sprites(schema: Schema) -> bool:
    """Whether a run's images are dSprites' (whatever hints its recorded schema carries), which
    the generator draws for any factor tuple."""
    return replace(schema, extra={}) == replace(DSprites.schema, extra={})


def upload_help(schema: Schema) -> str:
    """What an upload must be, for the run's images."""
    height, width, channels = schema.image_shape
    kind = "black-and-white" if schema.binary else ("colour" if channels == 3 else "grey")
    pixels = " (pixels 0/255 or 0/1)" if schema.binary else ""
    levels = " or gray levels" if schema.binary else ""
    return (
        f"A {width}x{height} {kind} PNG{pixels} like {schema.name}'s images; its factors are read "
        f"off the pixels by the model's posterior p(y | x). Other sizes{levels} are refused, not "
        "resized; an image no factor tuple explains is refused too."
    )


def binary_upload(pixels: np.ndarray) -> np.ndarray:
    """An uploaded picture (H, W) or (H, W, C) -> (64, 64) uint8 0/1, or a refusal that says why."""
    return binary_pixels(pixels, "the upload")


def upload_pixels(pixels: np.ndarray, schema: Schema) -> np.ndarray:
    """An uploaded picture as the run's images: dSprites' by `binary_upload`, else uint8 (H, W)
    grey or (H, W, 3) colour of exactly the data's size (binary ones 0/1); anything else is
    refused with a reason, never resized."""
    height, width, channels = schema.image_shape
    if schema.binary and (height, width) == (64, 64):
        return binary_upload(pixels)
    array = np.asarray(pixels)
    if array.ndim == 3:
        array = array[..., :3]  # an alpha channel says nothing of the picture
        if channels == 1:
            if not (array == array[..., :1]).all():
                raise CausalSpritesError(
                    f"the upload is in colour; {schema.name}'s images are grey"
                )
            array = array[..., 0]
    elif array.ndim == 2 and channels == 3:
        array = np.repeat(array[..., None], 3, -1)  # a grey picture is a colour one too
    if array.shape[:2] != (height, width):
        size = "x".join(str(n) for n in array.shape[1::-1]) if array.ndim >= 2 else "?"
        raise CausalSpritesError(
            f"the upload is {size} pixels; expected {width}x{height} ({schema.name}'s images)"
        )
    levels = set(np.unique(array).tolist())
    if schema.binary and not (levels <= {0, 1} or levels <= {0, 255}):
        raise CausalSpritesError(
            f"the upload is not binary: it has {len(levels)} gray levels; expected black and white"
        )
    if schema.binary:
        return (array > 0).astype(np.uint8)
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def value_choices(name: str, schema: Schema) -> list[str]:
    """A factor's values as the menus offer them: its class names, or CONTINUOUS_CHOICES values
    evenly over a continuous factor's range."""
    factor = schema.factor(name)
    if factor.kind == "categorical":
        return list(factor.classes)
    return [f"{v:g}" for v in np.linspace(*bounds(factor), CONTINUOUS_CHOICES)]


def factor_label(factor: Factor, template: str = "{}") -> str:
    """A control's label: `template` with the factor's name, and a continuous factor's unit."""
    unit = f" ({factor.unit})" if factor.kind == "continuous" and factor.unit else ""
    return template.format(factor.name) + unit


def value_text(name: str, value: float, schema: Schema) -> str:
    """A value as shown to the user: `heart (2)` where classes have names, else `5`; a
    continuous factor's `12.5 degrees`."""
    factor = schema.factor(name)
    if factor.kind == "continuous":
        return f"{factor.text(value)} {factor.unit}".rstrip()
    text = factor.classes[int(value)]
    return text if text == str(int(value)) else f"{text} ({int(value)})"


def _values(row: np.ndarray, schema: Schema) -> str:
    """`shape=heart (2), scale=5, ...`: a factor tuple (K,)."""
    return ", ".join(
        f"{n}={value_text(n, c, schema)}" for n, c in zip(schema.names, row, strict=True)
    )


def candidates_text(
    posterior: FactorPosterior,
    top: int,
    usual: dict[str, float] | None,
    schema: Schema,
) -> str:
    """Markdown lines: an upload's (one image's posterior) `top` most probable factor tuples with
    their probabilities, and its log-likelihood beside the held-out data's median."""
    lines = [
        f"**Read off the pixels, p(y | x)** (log-likelihood "
        f"{posterior.log_likelihood[0]:.1f} nats"
        + (f"; held-out median {usual['median']:.1f}):" if usual else "):")
    ]
    pairs = zip(posterior.classes[0][:top], posterior.probabilities[0][:top], strict=True)
    for classes, p in pairs:
        if p > 0:
            lines.append(f"- {p:.3f}: {_values(classes, schema)}")
    if not posterior.complete[0]:
        lines.append(
            "- *The search stopped on its budget: no tuple it scored explains this image well, "
            "and better ones may exist.*"
        )
    return "\n".join(lines)


def distribution_text(
    classes: np.ndarray, probabilities: np.ndarray, method: str, schema: Schema
) -> str:
    """Markdown lines: a counterfactual that the image does not pin down, as its most probable
    factor tuples (T, K) with their probabilities (T,)."""
    lines = [
        f"**The counterfactual is a distribution** ({method}, {DISTRIBUTION_SAMPLES} noise "
        "draws); the image shows the answer for the most probable factual factors:"
    ]
    for row, p in list(zip(classes, probabilities, strict=True))[:5]:
        lines.append(f"- {p:.3f}: {_values(row, schema)}")
    return "\n".join(lines)


def factor_table(
    factual: np.ndarray, counterfactual: np.ndarray, given: bool, schema: Schema
) -> str:
    """A Markdown table of the factual and counterfactual factors (K,) of one query."""
    source = "given" if given else "posterior mode"
    lines = [f"| factor | factual ({source}) | counterfactual |", "| --- | --- | --- |"]
    for i, name in enumerate(schema.names):
        before, after = factual[i], counterfactual[i]
        mark = " **(changed)**" if before != after else ""
        was, now = value_text(name, before, schema), value_text(name, after, schema)
        lines.append(f"| {name} | {was} | {now}{mark} |")
    return "\n".join(lines)


class Requests:
    """The images and values an app request names, as the run's `schema` has them: an image by
    its factors (the first of `data`'s images with them, or on dSprites without data the
    generator's), by its index, or uploaded; factor values from the menus."""

    def __init__(self, schema: Schema, data: DSprites | Dataset | None = None) -> None:
        self.schema = schema
        self.data = data
        self._rows: dict[tuple[int, ...], int] | None = None
        if data is None and not draws_sprites(schema):
            raise CausalSpritesError(f"the app of a run on {schema.name} needs its data")

    @property
    def num_images(self) -> int:
        """Images reachable by index: the data's rows, or the full official grid."""
        return NUM_IMAGES if self.data is None else len(self.data)

    def display(self, image: np.ndarray) -> np.ndarray:
        """An image as the page shows it: binary pixels as 0/255, 8-bit ones as they are."""
        return image * 255 if self.schema.binary else image

    def row_of(self, values: np.ndarray) -> int:
        """The first data row with these factors (K,): the same classes and, where factors are
        continuous, the nearest values (each in units of its range); or a refusal."""
        if isinstance(self.data, DSprites):
            return self.data.index(**dict(zip(self.schema.names, map(int, values), strict=True)))
        assert self.data is not None
        if not self.schema.categorical:
            return self._nearest_row(values)
        if self._rows is None:
            found, first = np.unique(self.data.factors(slice(None)), axis=0, return_index=True)
            keys = map(tuple, found.astype(int).tolist())
            self._rows = dict(zip(keys, first.tolist(), strict=True))
        row = self._rows.get(tuple(int(c) for c in values))
        if row is None:
            raise CausalSpritesError(f"no image with {self._wanted(values)} in the data")
        return int(row)

    def _nearest_row(self, values: np.ndarray) -> int:
        """`row_of` where some factors are continuous: a scan of the data's factors."""
        assert self.data is not None
        table = self.data.factors(slice(None))
        kinds = np.array([f.kind == "categorical" for f in self.schema.factors])
        same = np.flatnonzero((table[:, kinds] == values[kinds]).all(1))
        if not len(same):
            raise CausalSpritesError(f"no image with {self._wanted(values, kinds)} in the data")
        spans = np.array([np.ptp(bounds(f)) for f in self.schema.factors if f.kind == "continuous"])
        distance = (np.abs(table[same][:, ~kinds] - values[~kinds]) / spans).sum(1)
        return int(same[np.argmin(distance)])

    def _wanted(self, values: np.ndarray, shown: np.ndarray | None = None) -> str:
        """`hue=red, side=6`: the factors a refusal names (those `shown`, by default all)."""
        return ", ".join(
            f"{n}={value_text(n, v, self.schema)}"
            for k, (n, v) in enumerate(zip(self.schema.names, values, strict=True))
            if shown is None or shown[k]
        )

    def sprite(self, values: np.ndarray) -> np.ndarray:
        """The image of a factor tuple (K,): the data's, else (dSprites) the generator's."""
        if self.data is None:
            return render(values[None])[0]
        return self.data.images([self.row_of(values)])[0]

    def choose(
        self, source: str, factors: list[Any], index: Any, upload: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The chosen image and its labels (K,), or None when the posterior must say."""
        if source == "factors":
            names = self.schema.names
            parsed = [self.schema.parse_value(n, v) for n, v in zip(names, factors, strict=True)]
            values = factor_array(self.schema, np.array(parsed))
            return self.sprite(values), values
        if source == "dataset index":
            if index is None or not 0 <= int(index) < self.num_images:
                raise CausalSpritesError(f"the index must lie in 0..{self.num_images - 1}")
            row = int(index)
            if self.data is None:
                classes = index_to_classes(row, with_color=False)
                return render(classes[None])[0], classes
            labels = factor_array(self.schema, self.data.factors([row])[0])
            return self.data.images([row])[0], labels
        if source == "upload":
            if upload is None:
                raise CausalSpritesError("upload a PNG first")
            return upload_pixels(upload, self.schema), None
        raise CausalSpritesError(f"unknown image source {source!r}")

    def parse(self, values: Any, unset: str) -> dict[str, int | float]:
        """{factor: class index or value} of one value per factor as the controls give it
        (`unset` and None leave a factor out)."""
        return {
            name: self.schema.parse_value(name, value)
            for name, value in zip(self.schema.names, values, strict=True)
            if value not in (None, unset)
        }
