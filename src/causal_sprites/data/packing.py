"""Images kept bit-packed: (B, 512) uint8 rows (1 bit a pixel, row-major, high bit first) for
0/1 images (B, 64, 64), so the whole set fits in 377 MB and is unpacked per batch."""

from __future__ import annotations

import functools
from typing import Final

import numpy as np
import torch

from causal_sprites.errors import CausalSpritesError

IMAGE_SIZE: Final = 64
PACKED_SIZE: Final = IMAGE_SIZE * IMAGE_SIZE // 8


def pack(images: np.ndarray) -> np.ndarray:
    """Bit-pack 0/1 images (B, 64, 64) into (B, 512) uint8 (row-major, high bit first)."""
    images = np.asarray(images)
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise CausalSpritesError(f"images must have shape (B, 64, 64), got {images.shape}")
    return np.packbits(images.reshape(*images.shape[:-2], -1), axis=-1)


def unpack(packed: np.ndarray) -> np.ndarray:
    """Unpack (B, 512) uint8 into 0/1 images (B, 64, 64) uint8."""
    if packed.dtype != np.uint8 or packed.shape[-1:] != (PACKED_SIZE,):
        raise CausalSpritesError(f"packed images must be (B, 512) uint8, got {packed.shape}")
    return np.unpackbits(packed, axis=-1).reshape(*packed.shape[:-1], IMAGE_SIZE, IMAGE_SIZE)


@functools.cache
def _bit_table(device: torch.device) -> torch.Tensor:
    """(256, 8) uint8 on `device`: the bits of every byte value, high bit first."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    return torch.from_numpy(bits).to(device)


def unpack_torch(packed: torch.Tensor) -> torch.Tensor:
    """Unpack (B, 512) uint8 into 0/1 images (B, 64, 64) uint8 on the tensor's own device."""
    if packed.dtype != torch.uint8 or packed.shape[-1:] != (PACKED_SIZE,):
        raise CausalSpritesError(f"packed images must be (B, 512) uint8, got {tuple(packed.shape)}")
    if packed.device.type == "cpu":  # numpy's unpackbits beats any torch kernel on the CPU
        return torch.from_numpy(unpack(packed.numpy()))
    # On an accelerator, a byte -> 8 bits table lookup keeps the batch on the device.
    bits = _bit_table(packed.device).index_select(0, packed.reshape(-1).int())
    return bits.reshape(*packed.shape[:-1], IMAGE_SIZE, IMAGE_SIZE)
