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
from causal_sprites.data.pictures import image_pixels, run_pixels, size_text
from causal_sprites.data.render import render
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.figures import bounds, factor_array
from causal_sprites.model.readout import FactorPosterior
from causal_sprites.scm.factor_sampling import TOLERANCE

#: Noise draws behind a counterfactual's distribution in the app.
DISTRIBUTION_SAMPLES = 500
#: Dropdown entries for "no intervention on this factor" and "no evidence on this factor".
KEEP, ANY = "keep", "any"
#: Values a continuous factor's menu offers (evenly over its range; any other may be typed).
CONTINUOUS_CHOICES = 5


def draws_sprites(schema: Schema) -> bool:
    """Whether a run's images are dSprites' (whatever hints its recorded schema carries), which
    the generator draws for any factor tuple."""
    return replace(schema, extra={}) == replace(DSprites.schema, extra={})


def upload_help(schema: Schema) -> str:
    """What an upload must be, for the run's images, and what is converted."""
    height, width, channels = schema.image_shape
    kind = "black-and-white" if schema.binary else ("colour" if channels == 3 else "grey")
    pixels = ", pixels 0/255 or 0/1," if schema.binary else ""
    levels = " or gray levels" if schema.binary else ""
    converted = (
        "a grey picture is taken as colour"
        if channels == 3
        else "a colour picture whose channels are equal is taken as grey"
    )
    return (
        f"A {kind} PNG of {size_text(height, width)}{pixels} like {schema.name}'s images; its "
        f"factors are read off the pixels by the model's posterior p(y | x). Other sizes{levels} "
        f"are refused, not resized; {converted}, an alpha channel only where every pixel is "
        "opaque; an image no factor tuple explains is refused too."
    )


def sampling_help(schema: Schema, unset: str) -> str:
    """What a sampling tab's menus take: a class, or a continuous factor's value in its range
    (typed or chosen; conditioning also takes a range `low..high`)."""
    text = f"`{unset}` leaves a factor out."
    if schema.continuous:
        text += " A continuous factor takes any value in its range, typed in its unit" + (
            f"; given a value, images hold it within {TOLERANCE:.0%} of the range, or give"
            " a range `low..high`."
            if unset == ANY
            else "."
        )
    return text


def binary_upload(pixels: np.ndarray) -> np.ndarray:
    """An uploaded picture (H, W) or (H, W, C) -> (64, 64) uint8 0/1 as dSprites' images, or a
    refusal that says why."""
    return upload_pixels(pixels, DSprites.schema)


def upload_pixels(upload: Any, schema: Schema) -> np.ndarray:
    """An upload (a Pillow image, or its pixels (H, W) or (H, W, C)) as the run's images by
    `run_pixels`' rules: what keeps the picture is converted, anything else refused with a
    reason, never resized."""
    pixels, mode = image_pixels(upload, "the upload") if hasattr(upload, "mode") else (upload, None)
    return run_pixels(pixels, schema, "the upload", mode)


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
    their probabilities, each continuous factor's spread, and its log-likelihood beside the
    held-out data's median; a search the budget stopped and a classifier that reads otherwise
    are said."""
    lines = [
        f"**Read off the pixels, p(y | x)** (log-likelihood "
        f"{posterior.log_likelihood[0]:.1f} nats"
        + (f"; held-out median {usual['median']:.1f}):" if usual else "):")
    ]
    pairs = zip(posterior.classes[0][:top], posterior.probabilities[0][:top], strict=True)
    for classes, p in pairs:
        if p > 0:
            lines.append(f"- {p:.3f}: {_values(classes, schema)}")
    spreads = [
        f"{n} ± {value_text(n, posterior.spread[0][schema.index(n)], schema)}"
        for n in schema.continuous
    ]
    if spreads:
        lines.append(f"- spread (one standard deviation): {', '.join(spreads)}")
    if not posterior.complete[0]:
        lines.append(
            "- *The search stopped on its budget: no tuple it scored explains this image well, "
            "and better ones may exist.*"
        )
    if not posterior.classifier_agrees[0]:
        lines.append(
            "- *In doubt: the model's classifier q(y | x) reads other factors, whatever the "
            "probability above.*"
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
        was = value_text(name, factual[i], schema)
        now = value_text(name, counterfactual[i], schema)
        mark = " **(changed)**" if was != now else ""  # as shown: a continuous value's digits
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

    def row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """A data row's image and labels (K,): the data's, else (dSprites) the generator's."""
        if self.data is None:
            classes = index_to_classes(row, with_color=False)
            return render(classes[None])[0], classes
        return self.data.images([row])[0], factor_array(self.schema, self.data.factors([row])[0])

    def choose(
        self, source: str, factors: list[Any], index: Any, upload: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The chosen image and its labels (K,), or None when the posterior must say. An image
        chosen by its factors is the data's row with them (the nearest, with its own values,
        where factors are continuous)."""
        if source == "factors":
            names = self.schema.names
            parsed = [self.schema.parse_value(n, v) for n, v in zip(names, factors, strict=True)]
            values = factor_array(self.schema, np.array(parsed))
            if self.data is None:
                return render(values[None])[0], values
            return self.row(self.row_of(values))
        if source == "dataset index":
            if index is None or not 0 <= int(index) < self.num_images:
                raise CausalSpritesError(f"the index must lie in 0..{self.num_images - 1}")
            return self.row(int(index))
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
