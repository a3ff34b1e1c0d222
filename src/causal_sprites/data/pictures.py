"""Pictures from outside (image files, uploads) as a run's images, or a one-line refusal. Only
what keeps the picture is converted: a grey picture becomes colour for a colour run, a colour one
whose channels are equal becomes grey for a grey run, and an alpha channel is dropped where every
pixel is opaque. Transparent pixels, colour for a grey run, other sizes and (for binary images)
gray levels are refused, never resized, blended or thresholded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np

from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError

#: Pillow modes read as grey and as colour: 1-bit pictures are read as grey (L), palette ones
#: as colour with alpha (RGBA, which keeps a transparent colour transparent).
GREY_MODES: Final = ("1", "L", "LA")
COLOUR_MODES: Final = ("RGB", "RGBA", "P")
_EXPANDED: Final = {"1": "L", "P": "RGBA"}
#: The mode of an array of pixels by its channels: a 2-D array is grey (L).
_ARRAY_MODES: Final = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def size_text(height: int, width: int) -> str:
    """An image size as every message writes it: `32x48 pixels (height x width)`."""
    return f"{height}x{width} pixels (height x width)"


def image_pixels(image: Any, name: str) -> tuple[np.ndarray, str]:
    """A Pillow image's pixels, uint8 (H, W) or (H, W, C) with any alpha channel kept, and its
    mode; modes other than grey (1, L, LA) and colour (RGB, RGBA, P) are refused."""
    mode = str(image.mode)
    if mode not in GREY_MODES + COLOUR_MODES:
        raise CausalSpritesError(
            f"{name} has mode {mode}: save it as 8-bit grey (L) or colour (RGB)"
        )
    return np.asarray(image.convert(_EXPANDED.get(mode, mode))), mode


def read_picture(path: Path) -> tuple[np.ndarray, str]:
    """An image file's pixels and mode (`image_pixels`), or a one-line refusal."""
    from PIL import Image, UnidentifiedImageError  # pillow: only when a file is read

    try:
        with Image.open(path) as image:
            return image_pixels(image, str(path))
    except (UnidentifiedImageError, OSError) as error:
        raise CausalSpritesError(f"cannot read {path} as an image: {error}") from None


def opaque(pixels: np.ndarray, name: str, mode: str | None = None) -> np.ndarray:
    """Pixels (H, W) or (H, W, C) without their alpha channel (C of 2 or 4), which must be fully
    opaque: blending transparent pixels onto some background would change the picture."""
    array = np.asarray(pixels)
    channels = array.shape[-1] if array.ndim == 3 else 1
    if array.ndim not in (2, 3) or channels not in _ARRAY_MODES:
        raise CausalSpritesError(
            f"{name} is not a picture: expected (H, W) or (H, W, 3) pixels, got {array.shape}"
        )
    if channels in (2, 4):
        if (array[..., -1] < 255).any():
            raise CausalSpritesError(
                f"{name} has transparent pixels (mode {mode or _ARRAY_MODES[channels]}): save "
                "it without an alpha channel"
            )
        array = array[..., :-1]
    return array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array


def run_pixels(
    pixels: np.ndarray, schema: Schema, name: str, mode: str | None = None
) -> np.ndarray:
    """A picture (H, W) or (H, W, C) as the run's images, uint8 (H, W) grey (0/1 where binary)
    or (H, W, 3) colour of exactly the schema's size (the conversions of this module's rule);
    `name` says what it is in errors, `mode` its Pillow mode where it came from a file."""
    array = opaque(pixels, name, mode)
    height, width, channels = schema.image_shape
    if array.ndim == 3 and channels == 1:
        if not (array == array[..., :1]).all():
            kind = "black and white" if schema.binary else "grey"
            raise CausalSpritesError(
                f"{name} is in colour (mode {mode or 'RGB'}); {schema.name}'s images are {kind}"
            )
        array = array[..., 0]
    elif array.ndim == 2 and channels == 3:
        array = np.repeat(array[..., None], 3, -1)  # a grey picture is a colour one too
    if array.shape[:2] != (height, width):
        raise CausalSpritesError(
            f"{name} is {size_text(*array.shape[:2])}; expected {height}x{width} "
            f"({schema.name}'s images)"
        )
    if schema.binary:
        levels = set(np.unique(array).tolist())
        if not (levels <= {0, 1} or levels <= {0, 255}):
            raise CausalSpritesError(
                f"{name} is not binary: it has {len(levels)} gray levels; expected black and "
                "white (0/1 or 0/255) pixels"
            )
        return (array > 0).astype(np.uint8)
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def read_png(path: Path, schema: Schema) -> np.ndarray:
    """An image file as the run's images (`run_pixels`), or a one-line refusal."""
    pixels, mode = read_picture(path)
    return run_pixels(pixels, schema, str(path), mode)
