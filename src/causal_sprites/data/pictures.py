"""Pictures from outside (PNG files, uploads) as a run's images (64x64 binary sprites on dSprites,
grey or colour pictures of the data's size otherwise), or a one-line refusal: other sizes, modes
and gray levels are refused, never resized or thresholded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError


def binary_pixels(pixels: np.ndarray, name: str) -> np.ndarray:
    """A picture (H, W) or (H, W, C) -> (64, 64) uint8 0/1; `name` says what it is in errors."""
    array = np.asarray(pixels)
    if array.ndim == 3:
        array = array[..., :3].max(-1) if array.shape[-1] >= 3 else array[..., 0]
    if array.ndim != 2 or array.shape != (64, 64):
        size = "x".join(str(n) for n in array.shape[1::-1]) if array.ndim >= 2 else "?"
        raise CausalSpritesError(f"{name} is {size} pixels; expected a 64x64 image")
    levels = set(np.unique(array).tolist())
    if not (levels <= {0, 1} or levels <= {0, 255}):
        raise CausalSpritesError(
            f"{name} is not binary: it has {len(levels)} gray levels; expected black and white "
            "(0/1 or 0/255) pixels"
        )
    return (array > 0).astype(np.uint8)


def read_binary_png(path: Path) -> np.ndarray:
    """A 64x64 black-and-white image file as (64, 64) uint8 0/1; anything else is refused."""
    from PIL import Image, UnidentifiedImageError  # pillow: only when a file is read

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise CausalSpritesError(f"cannot read {path} as an image: {error}") from None
    return binary_pixels(pixels, str(path))


def read_png(path: Path, schema: Schema) -> np.ndarray:
    """An image file as the schema's images: binary ones by `read_binary_png`'s rules (64x64 on
    dSprites), else uint8 (H, W) grey or (H, W, 3) colour of exactly the schema's size."""
    height, width, channels = schema.image_shape
    if schema.binary and (height, width) == (64, 64):
        return read_binary_png(path)
    from PIL import Image, UnidentifiedImageError  # pillow: only when a file is read

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise CausalSpritesError(f"cannot read {path} as an image: {error}") from None
    if pixels.shape[:2] != (height, width):
        raise CausalSpritesError(
            f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; expected {width}x{height}"
            f" ({schema.name}'s images)"
        )
    return (pixels > 0).astype(np.uint8) if schema.binary else pixels
