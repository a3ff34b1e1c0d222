"""dSprites in memory: the `DSprites` store of bit-packed images and their classes, loaded from an
official-format file through a packed cache beside it.

The official files are read and verified in `official`, generated or downloaded in `sources` and
bit-packed in `packing`; their public names are importable from here as well.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from causal_sprites.data.dataset import checked_rows, random_split
from causal_sprites.data.factors import (
    ALL_FACTORS,
    FACTORS,
    NUM_IMAGES,
    SCHEMA,
    classes_to_index,
    classes_to_values,
    parse_factor_value,
)
from causal_sprites.data.official import (
    CHUNK_IMAGES,
    DEFAULT_FILENAME,
    HDF5_FILENAME,
    KNOWN_FILES,
    OFFICIAL_HDF5_URL,
    OFFICIAL_URL,
    check_classes,
    data_dir,
    default_path,
    metadata,
    verify,
)
from causal_sprites.data.official import read_file as _read
from causal_sprites.data.packing import IMAGE_SIZE, PACKED_SIZE, pack, unpack, unpack_torch
from causal_sprites.data.packing import _bit_table as _bit_table
from causal_sprites.data.sources import download, ensure_default_data, generate
from causal_sprites.errors import CausalSpritesError

__all__ = [
    "CACHE_MIN_IMAGES",
    "CHUNK_IMAGES",
    "DEFAULT_FILENAME",
    "DEFAULT_HOLDOUT",
    "HDF5_FILENAME",
    "IMAGE_SIZE",
    "KNOWN_FILES",
    "OFFICIAL_HDF5_URL",
    "OFFICIAL_URL",
    "PACKED_SIZE",
    "DSprites",
    "DSpritesDataset",
    "Index",
    "data_dir",
    "default_path",
    "download",
    "ensure_default_data",
    "generate",
    "metadata",
    "pack",
    "unpack",
    "unpack_torch",
    "verify",
]

#: Files with at least this many images get a packed cache beside them (`<file>.packed.npz`).
CACHE_MIN_IMAGES = 65_536
#: Default held-out combinations of `DSprites.split("heldout")`: every heart at posX > 24.
DEFAULT_HOLDOUT: Final[Mapping[str, Any]] = {"shape": "heart", "posX": range(25, 32)}
_CACHE_VERSION: Final = 1

Index = int | slice | Sequence[int] | np.ndarray


def _cache_path(path: Path) -> Path:
    return path.with_name(path.name + ".packed.npz")


def _cache_key(path: Path) -> np.ndarray:
    stat = path.stat()
    return np.array([_CACHE_VERSION, stat.st_size, stat.st_mtime_ns], dtype=np.int64)


def _load_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Packed images and classes from the cache beside `path`, when it is current."""
    cache = _cache_path(path)
    if not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if not np.array_equal(saved["key"], _cache_key(path)):
                return None
            packed, classes = saved["packed"], saved["classes"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if packed.shape != (len(classes), PACKED_SIZE) or classes.shape[1:] != (6,):
        return None
    return packed, classes


def _save_cache(path: Path, packed: np.ndarray, classes: np.ndarray) -> None:
    """Write the packed cache atomically; a read-only directory just goes without one."""
    cache = _cache_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".part", dir=cache.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=_cache_key(path), packed=packed, classes=classes)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600: others sharing the directory read it
        os.replace(tmp, cache)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Packed images and classes of a file, through the packed cache for large files."""
    cached = _load_cache(path) if path.exists() else None
    if cached is not None:
        return cached
    packed, classes, _, _ = _read(path)
    if len(classes) >= CACHE_MIN_IMAGES:
        _save_cache(path, packed, classes)
    return packed, classes


# --- the in-memory store -----------------------------------------------------------------------


class DSprites:
    """dSprites images kept bit-packed (N, 512) uint8 with their classes (N, 6) int64.

    Rows may be any subset of the official set, in any order and with repeats (a causal variant).
    """

    def __init__(self, packed: np.ndarray, classes: np.ndarray) -> None:
        packed, classes = np.asarray(packed), np.asarray(classes)
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != PACKED_SIZE:
            raise CausalSpritesError(f"packed images must be (N, 512) uint8, got {packed.shape}")
        if classes.shape != (len(packed), 6) or not np.issubdtype(classes.dtype, np.integer):
            raise CausalSpritesError(
                f"classes must be (N, 6) integers for {len(packed)} images, got {classes.shape}"
            )
        self.packed = packed
        self._classes = classes.astype(np.int64, copy=False)
        check_classes("classes ", self._classes)
        self._row_of: np.ndarray | None = None

    @classmethod
    def load(cls, path: Path | str | None = None) -> DSprites:
        """Load an official-format .npz or .hdf5 (default: the default data, made if missing)."""
        return cls(*_load_arrays(Path(path) if path is not None else ensure_default_data()))

    @classmethod
    def from_arrays(cls, imgs: np.ndarray, classes: np.ndarray) -> DSprites:
        """Build from 0/1 images (N, 64, 64) and classes (N, 6), or (N, 5) without color."""
        imgs, classes = np.asarray(imgs), np.asarray(classes)
        if imgs.size and (imgs.min() < 0 or imgs.max() > 1):
            raise CausalSpritesError("non-binary pixels: images must be 0/1")
        if classes.ndim == 2 and classes.shape[1] == 5:
            classes = np.concatenate([np.zeros((len(classes), 1), classes.dtype), classes], 1)
        return cls(pack(imgs.astype(np.uint8, copy=False)), classes)

    #: The factor schema every consumer asks: five categorical factors, binary 64x64 images.
    schema = SCHEMA

    def __len__(self) -> int:
        return len(self.packed)

    def __repr__(self) -> str:
        return f"DSprites({len(self)} images, {self.packed.nbytes / 2**20:.0f} MiB packed)"

    def _rows(self, idx: Index) -> np.ndarray:
        return checked_rows(idx, len(self))

    def images(self, idx: Index) -> np.ndarray:
        """0/1 images (B, 64, 64) uint8 of rows `idx` (an int gives one (64, 64) image)."""
        return unpack(self.packed[self._rows(idx)])

    def classes(self, idx: Index) -> np.ndarray:
        """Class tuples (B, 6) int64 of rows `idx`, color first as in `latents_classes`."""
        return self._classes[self._rows(idx)]

    def values(self, idx: Index) -> np.ndarray:
        """Factor values (B, 6) float64 of rows `idx`, as in `latents_values`."""
        return classes_to_values(self.classes(idx))

    def factors(self, idx: Index) -> np.ndarray:
        """Class tuples (B, 5) int64 without color: shape, scale, orientation, posX, posY."""
        return self.classes(idx)[..., 1:]

    def index(self, **factors: int | str) -> int:
        """Row of the image with these five factors (by index or, for shape, name), in O(1)."""
        missing = [name for name in FACTORS if name not in factors]
        if missing:
            raise CausalSpritesError(f"index needs all five factors; missing {', '.join(missing)}")
        classes = [parse_factor_value(name, factors[name]) for name in FACTORS]
        if self._row_of is None:
            official, first = np.unique(classes_to_index(self._classes), return_index=True)
            self._row_of = np.full(NUM_IMAGES, -1, dtype=np.int64)
            self._row_of[official] = first
        row = int(self._row_of[classes_to_index(np.array(classes))])
        if row < 0:
            given = ", ".join(
                f"{name}={value}" for name, value in zip(FACTORS, classes, strict=True)
            )
            raise CausalSpritesError(f"no image with {given} in this data")
        return row

    def _match(self, given: Mapping[str, Any]) -> np.ndarray:
        """Mask of rows whose factors take one of the given values (a value or a collection)."""
        mask = np.ones(len(self), dtype=bool)
        for name, value in given.items():
            choices = (
                value if isinstance(value, Iterable) and not isinstance(value, str) else [value]
            )
            allowed = [parse_factor_value(name, choice) for choice in choices]
            mask &= np.isin(self._classes[:, ALL_FACTORS.index(name)], allowed)
        return mask

    def find(self, **given: int | str) -> np.ndarray:
        """Rows (int64) whose factors match all the given ones (`shape='heart', scale=5`)."""
        return np.flatnonzero(self._match(given))

    def split(
        self,
        kind: Literal["random", "heldout"] = "random",
        test_fraction: float = 0.1,
        seed: int = 0,
        holdout: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (train, test) rows. `random`: a seeded `test_fraction` of rows. `heldout`:
        every row matching `holdout` (factor -> value or values; default hearts at posX > 24)."""
        if kind == "random":
            return random_split(len(self), test_fraction, seed)
        if kind == "heldout":
            test = self._match(DEFAULT_HOLDOUT if holdout is None else holdout)
            if not test.any() or test.all():
                which = "no rows" if not test.any() else "every row"
                raise CausalSpritesError(f"the held-out combinations match {which}")
            return np.flatnonzero(~test), np.flatnonzero(test)
        raise CausalSpritesError(f"unknown split {kind!r}: expected 'random' or 'heldout'")

    def dataset(
        self, indices: Sequence[int] | np.ndarray | None = None, dtype: torch.dtype = torch.float32
    ) -> DSpritesDataset:
        """A torch Dataset of rows `indices` (default all) yielding (x (1, 64, 64), y (5,))."""
        return DSpritesDataset(self, indices, dtype)

    def loader(
        self,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        drop_last: bool = False,
    ) -> DataLoader:
        """Batches (x (B, 1, 64, 64), y (B, 5) int64) of rows `indices`, unpacked per batch."""
        data = self.dataset(indices, dtype)
        sampler: RandomSampler | SequentialSampler
        if shuffle:
            sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = SequentialSampler(data)
        # batch_size=None: the dataset gets each whole list of positions and unpacks it at once.
        return DataLoader(
            data, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None
        )


class DSpritesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Rows of a DSprites as (x (1, 64, 64), y (5,) int64); a list of positions gives a batch."""

    def __init__(
        self, data: DSprites, indices: Sequence[int] | np.ndarray | None, dtype: torch.dtype
    ) -> None:
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise CausalSpritesError(f"image dtype must be uint8 or floating point, got {dtype}")
        self.data = data
        self.rows = data._rows(np.arange(len(data)) if indices is None else indices).reshape(-1)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[position]
        x = torch.from_numpy(self.data.images(rows)).unsqueeze(-3).to(self.dtype)
        return x, torch.from_numpy(self.data.factors(rows))
