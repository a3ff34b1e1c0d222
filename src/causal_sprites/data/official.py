"""The official dSprites files (Matthey et al. 2017): where they live, reading and verifying the
.npz and its .hdf5 twin into packed images, classes and values.

Never unpickles: .npy headers are checked before any array is read, and `metadata` is skipped.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Final, Literal

import h5py
import numpy as np

from causal_sprites.data.factors import (
    ALL_FACTORS,
    ALL_SIZES,
    NUM_IMAGES,
    SHAPE_NAMES,
    VALUES,
    classes_to_values,
    index_to_classes,
)
from causal_sprites.data.packing import IMAGE_SIZE, PACKED_SIZE
from causal_sprites.errors import CausalSpritesError

DEFAULT_FILENAME: Final = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
HDF5_FILENAME: Final = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.hdf5"
_REPOSITORY: Final = "https://github.com/deepmind/dsprites-dataset/raw/master/"
OFFICIAL_URL: Final = _REPOSITORY + DEFAULT_FILENAME
OFFICIAL_HDF5_URL: Final = _REPOSITORY + HDF5_FILENAME
#: (bytes, sha256) of the official files, by name; the npz's is recorded once a user verifies it.
KNOWN_FILES: Final[dict[str, tuple[int, str]]] = {
    HDF5_FILENAME: (28_024_106, "729fa22e884c9c500e1f17415d580746b4c5894fbbb780a1319bbcfa39a745bb"),
}
#: Images per chunk when streaming pixels (64 MB of uint8).
CHUNK_IMAGES: Final = 16_384

_NPZ_KEYS: Final = ("imgs", "latents_classes", "latents_values")
_HDF5_KEYS: Final = {
    "imgs": "imgs",
    "latents_classes": "latents/classes",
    "latents_values": "latents/values",
}
_DTYPES: Final = {"imgs": np.uint8, "latents_classes": np.int64, "latents_values": np.float64}
_TRAILING: Final = {
    "imgs": (IMAGE_SIZE, IMAGE_SIZE),
    "latents_classes": (6,),
    "latents_values": (6,),
}
_ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC: Final = b"\x89HDF\r\n\x1a\n"


def data_dir() -> Path:
    """The data directory: `$CAUSAL_SPRITES_DATA`, else `~/.cache/causal_sprites`."""
    env = os.environ.get("CAUSAL_SPRITES_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "causal_sprites"


def default_path() -> Path:
    """Where the default data lives: the official file name in `data_dir()`."""
    return data_dir() / DEFAULT_FILENAME


def metadata() -> dict[str, Any]:
    """The official file's `metadata`, rebuilt from the factor constants (never unpickled)."""
    return {
        "title": "dSprites dataset",
        "version": "1",
        "latents_names": ALL_FACTORS,
        "latents_sizes": np.array(ALL_SIZES),
        "latents_possible_values": {name: VALUES[name].copy() for name in ALL_FACTORS},
        "shape_names": SHAPE_NAMES,
    }


def _sniff(path: Path) -> Literal["npz", "hdf5"]:
    """The file's format from its first bytes; raises for missing or unknown files."""
    if not path.exists():
        raise CausalSpritesError(f"no such file: {path}")
    if path.is_dir():
        raise CausalSpritesError(f"{path} is a directory, not a dSprites file")
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] in _ZIP_MAGIC:
        return "npz"
    if head == _HDF5_MAGIC:
        return "hdf5"
    if not head:
        raise CausalSpritesError(f"{path} is empty (truncated download?)")
    raise CausalSpritesError(f"{path} is neither an .npz (zip) nor an HDF5 file")


def _check_layout(path: Path, dtypes: Mapping[str, np.dtype], shapes: Mapping[str, tuple]) -> int:
    """Check dtypes and shapes of the three arrays; returns the number of images."""
    for key, dtype in dtypes.items():
        if dtype.hasobject:
            raise CausalSpritesError(
                f"{path}: {key} is a pickled object array; refusing to load it"
            )
    for key, dtype in dtypes.items():
        if dtype != _DTYPES[key]:
            want = np.dtype(_DTYPES[key])
            raise CausalSpritesError(f"{path}: wrong dtype: {key} is {dtype}, expected {want}")
    num = shapes["imgs"][0] if shapes["imgs"] else 0
    for key, shape in shapes.items():
        if len(shape) != 1 + len(_TRAILING[key]) or shape[1:] != _TRAILING[key] or shape[0] != num:
            dims = ", ".join(["N", *map(str, _TRAILING[key])])
            raise CausalSpritesError(f"{path}: wrong shape: {key} is {shape}, expected ({dims})")
    return num


def _pack_stream(path: Path, num: int, read: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Bit-pack images read chunk by chunk with `read(start, stop)`, checking they are 0/1."""
    packed = np.empty((num, PACKED_SIZE), dtype=np.uint8)
    for start in range(0, num, CHUNK_IMAGES):
        stop = min(num, start + CHUNK_IMAGES)
        chunk = read(start, stop).reshape(stop - start, -1)
        if chunk.max(initial=0) > 1:
            row = start + int(np.argmax((chunk > 1).any(axis=1)))
            raise CausalSpritesError(
                f"{path}: non-binary pixels: image {row} has values other than 0/1"
            )
        packed[start:stop] = np.packbits(chunk, axis=1)
    return packed


def _npy_header(f: IO[bytes], path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header (no pickle involved); refuses Fortran order."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CausalSpritesError(f"{path}: {key} has unsupported .npy version {version}")
    except ValueError as error:
        raise CausalSpritesError(f"{path}: {key} has a corrupt .npy header ({error})") from None
    if fortran and len(shape) > 1:
        raise CausalSpritesError(f"{path}: {key} is stored in Fortran order; expected C order")
    return tuple(shape), dtype


def _read_exact(
    f: IO[bytes], path: Path, key: str, shape: tuple[int, ...], dtype: Any
) -> np.ndarray:
    """Read exactly one array of `shape` from a stream; raises when it ends early."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    data = f.read(size)
    if len(data) != size:
        raise CausalSpritesError(f"{path}: {key} is truncated ({len(data)} of {size} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed images, classes and values of an official-format .npz, streamed."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = [key for key in _NPZ_KEYS if f"{key}.npy" not in names]
        if missing:
            found = sorted(name.removesuffix(".npy") for name in names)
            raise CausalSpritesError(
                f"{path}: wrong keys: missing {', '.join(missing)} (found {', '.join(found)})"
            )
        headers = {}
        for key in _NPZ_KEYS:
            with archive.open(f"{key}.npy") as f:
                headers[key] = _npy_header(f, path, key)
        num = _check_layout(
            path, {k: h[1] for k, h in headers.items()}, {k: h[0] for k, h in headers.items()}
        )
        arrays = {}
        for key in _NPZ_KEYS:
            with archive.open(f"{key}.npy") as f:
                _npy_header(f, path, key)
                if key == "imgs":
                    arrays[key] = _pack_stream(path, num, functools.partial(_read_images, f, path))
                else:
                    arrays[key] = _read_exact(f, path, key, headers[key][0], _DTYPES[key])
                if f.read(1):  # reading to the end also makes zipfile check the CRC
                    raise CausalSpritesError(f"{path}: {key} has bytes beyond its shape")
    return arrays["imgs"], arrays["latents_classes"], arrays["latents_values"]


def _read_images(f: IO[bytes], path: Path, start: int, stop: int) -> np.ndarray:
    """Images [start, stop) of an .npy stream positioned at image `start`."""
    return _read_exact(f, path, "imgs", (stop - start, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def _read_hdf5(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed images, classes and values of the official .hdf5 twin, read in slices."""
    with h5py.File(path, "r") as file:
        missing = [
            name for name in _HDF5_KEYS.values() if not isinstance(file.get(name), h5py.Dataset)
        ]
        if missing:
            raise CausalSpritesError(f"{path}: wrong keys: missing {', '.join(missing)}")
        datasets = {key: file[name] for key, name in _HDF5_KEYS.items()}
        num = _check_layout(
            path,
            {key: ds.dtype for key, ds in datasets.items()},
            {key: ds.shape for key, ds in datasets.items()},
        )
        classes = datasets["latents_classes"][()]
        values = datasets["latents_values"][()]
        imgs = datasets["imgs"]
        packed = _pack_stream(path, num, lambda start, stop: imgs[start:stop])
    return packed, classes, values


def check_classes(where: str, classes: np.ndarray) -> None:
    """Every class must lie in its factor's grid."""
    for column, (name, size) in enumerate(zip(ALL_FACTORS, ALL_SIZES, strict=True)):
        bad = np.flatnonzero((classes[:, column] < 0) | (classes[:, column] >= size))
        if bad.size:
            value = classes[bad[0], column]
            raise CausalSpritesError(
                f"{where}row {bad[0]}: {name} class {value} is out of range 0..{size - 1}"
            )


def _check_values(path: Path, classes: np.ndarray, values: np.ndarray) -> None:
    """Classes must lie in the grids and values must be the grids' values at the classes."""
    check_classes(f"{path}: latents_classes ", classes)
    wrong = ~np.isclose(values, classes_to_values(classes), rtol=0.0, atol=1e-6).all(axis=1)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise CausalSpritesError(
            f"{path}: latents_values row {row} do not match the factor grids at its classes"
        )


def read_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Packed images (N, 512), classes (N, 6), values (N, 6) and format of a dSprites file."""
    kind = _sniff(path)
    try:
        packed, classes, values = _read_npz(path) if kind == "npz" else _read_hdf5(path)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise CausalSpritesError(f"{path}: truncated or corrupt zip archive ({error})") from None
    except (OSError, RuntimeError, KeyError) as error:
        raise CausalSpritesError(f"{path}: truncated or corrupt {kind} file ({error})") from None
    _check_values(path, classes, values)
    return packed, np.ascontiguousarray(classes), values, kind


def verify(path: Path | str, sha256: str | None = None, *, num_images: int = NUM_IMAGES) -> dict:
    """Check an official-format file strictly; returns a summary or raises CausalSpritesError.

    Checks keys, dtypes, shapes, 0/1 pixels, the official row order (posY fastest) over exactly
    `num_images` rows, values on the grids, and the size and sha256 when known (or given).
    """
    path = Path(path)
    _sniff(path)
    size = path.stat().st_size
    known = KNOWN_FILES.get(path.name)
    expected = (sha256 or (known[1] if known else "")).lower()
    if known and not sha256 and size != known[0]:
        raise CausalSpritesError(f"{path}: checksum mismatch: {size} bytes, expected {known[0]}")
    digest = _sha256(path)
    if expected and digest != expected:
        raise CausalSpritesError(f"{path}: checksum mismatch: sha256 {digest}, expected {expected}")
    _, classes, _, kind = read_file(path)
    num = len(classes)
    official = index_to_classes(np.arange(min(num, num_images)))
    wrong = (classes[: len(official)] != official).any(axis=1)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise CausalSpritesError(
            f"{path}: reordered rows: row {row} has classes {classes[row].tolist()}, expected "
            f"{official[row].tolist()} (official order, posY fastest)"
        )
    if num != num_images:
        raise CausalSpritesError(f"{path}: wrong shape: {num} images, expected {num_images}")
    return {
        "path": str(path),
        "format": kind,
        "num_images": num,
        "bytes": size,
        "sha256": digest,
        "checksum": "matched" if expected else "not known",
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
