"""What queries accept: images, labels and interventions checked and coerced into tensors, and
seeded blocks that leave the caller's random state alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError

Value = str | int | float
Interventions = Mapping[str, Value | Sequence[Value] | np.ndarray | Tensor]
Method = Literal["exact", "generic"]
Style = Literal["mean", "sample"]
PixelNoise = Literal["median", "draw"]


def as_images(x: np.ndarray | Tensor, schema: Schema) -> Tensor:
    """Images as users give them, (B, H, W) or (H, W) grey, (B, H, W, C) or (H, W, C) colour (or
    already (B, C, H, W)), 0/1 for a binary schema, else 0..255 -> float (B, C, H, W); any other
    shape or value is refused."""
    images = torch.as_tensor(np.asarray(x))
    height, width, channels = schema.image_shape
    user = (height, width) if channels == 1 else (height, width, channels)
    if tuple(images.shape) == user:
        images = images[None]
    if images.dim() == 4 and tuple(images.shape[1:]) == (channels, height, width):
        images = images[:, 0] if channels == 1 else images.permute(0, 2, 3, 1)
    if images.dim() != len(user) + 1 or tuple(images.shape[1:]) != user:
        expected = ", ".join(map(str, ("B", *user)))
        raise CausalSpritesError(f"images must have shape ({expected}), got {tuple(images.shape)}")
    if schema.binary and not bool(((images == 0) | (images == 1)).all()):
        raise CausalSpritesError("images must be binary (0/1 pixels)")
    if not schema.binary and not bool(
        ((images >= 0) & (images <= 255) & (images == images.round())).all()
    ):
        raise CausalSpritesError("images must hold 8-bit pixel values (0..255)")
    images = images.float()
    return images[:, None] if channels == 1 else images.permute(0, 3, 1, 2).contiguous()


def as_user(images: Tensor) -> Tensor:
    """Images (B, C, H, W) as users hold them: (B, H, W) grey, (B, H, W, C) colour."""
    return images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1)


def site_to_user(x: Tensor, channels_first: bool) -> Tensor:
    """Images of the model's image site as users hold them, uint8 on the CPU: (..., C, H, W)
    when `channels_first` becomes (..., H, W) grey or (..., H, W, C) colour; dSprites' site
    (..., 64, 64) stays as it is."""
    x = x.to(torch.uint8).cpu()
    if not channels_first:
        return x
    x = x.movedim(-3, -1)
    return x[..., 0] if x.shape[-1] == 1 else x


def as_labels(y: np.ndarray | Tensor, batch: int, schema: Schema) -> Tensor:
    """Factor values (B, K) of the schema's K factors, or (B, K + 1) with a leading constant
    column (dSprites' color) -> (B, K): int64 class indices where every factor is categorical,
    else float (a class index or a value per column); range-checked."""
    kind = torch.long if schema.categorical else torch.float32
    labels = torch.as_tensor(np.asarray(y, dtype=np.float64))
    count = len(schema.factors)
    if labels.dim() == 1:
        labels = labels[None]
    if labels.dim() != 2 or labels.shape[1] not in (count, count + 1):
        raise CausalSpritesError(f"labels must have shape (B, {count}), got {tuple(labels.shape)}")
    labels = labels[:, -count:]
    if labels.shape[0] != batch:
        raise CausalSpritesError(f"{labels.shape[0]} labels for {batch} images")
    for i, factor in enumerate(schema.factors):
        column = labels[:, i]
        if factor.kind == "continuous":
            if not factor.within_range(column.numpy()):
                raise CausalSpritesError(
                    f"value of {factor.name} out of its range {factor.low:g}..{factor.high:g}"
                )
        elif not bool(((column >= 0) & (column < factor.size) & (column == column.round())).all()):
            raise CausalSpritesError(f"label for {factor.name} out of range 0..{factor.size - 1}")
    return labels.to(kind)


def as_interventions(do: Interventions | None, batch: int, schema: Schema) -> dict[str, Tensor]:
    """do() values by name or index (a value for a continuous factor), one for all images or one
    per image -> {factor: (B,)}: int64 classes, or float32 values of a continuous factor."""
    actions: dict[str, Tensor] = {}
    for name, value in (do or {}).items():
        given = np.asarray(value.cpu() if isinstance(value, Tensor) else value).reshape(-1)
        if given.size == 1:
            given = np.repeat(given, batch)
        if given.size != batch:
            raise CausalSpritesError(f"{given.size} values of {name} for {batch} images")
        unique, inverse = np.unique(given, return_inverse=True)
        if schema.factor(name).kind == "continuous":
            values = np.array([schema.parse_value(name, v) for v in unique.tolist()], np.float32)
        else:
            if unique.dtype.kind == "f" and np.array_equal(unique, np.round(unique)):
                unique = unique.astype(np.int64)  # class indices in a float array (mixed data)
            values = np.array([int(schema.parse_value(name, v)) for v in unique.tolist()], np.int64)
        actions[name] = torch.from_numpy(values[inverse].reshape(-1))
    return actions


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block from torch's RNG seeded with `seed` (and restore it after); None: as is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_count(num_samples: int) -> None:
    if num_samples < 1:
        raise CausalSpritesError(f"the number of samples must be >= 1, got {num_samples}")
