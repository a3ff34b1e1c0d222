"""The official dSprites files (Matthey et al. 2017): load, verify, download; a bit-packed store.

Never unpickles: .npy headers are checked before any array is read, and `metadata` is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Literal

import h5py
import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TimeRemainingColumn,
)
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from causal_sprites.data.factors import (
    ALL_FACTORS,
    ALL_SIZES,
    FACTORS,
    NUM_IMAGES,
    SHAPE_NAMES,
    VALUES,
    classes_to_index,
    classes_to_values,
    index_to_classes,
    parse_factor_value,
)
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
IMAGE_SIZE: Final = 64
PACKED_SIZE: Final = IMAGE_SIZE * IMAGE_SIZE // 8
#: Images per chunk when streaming pixels (64 MB of uint8).
CHUNK_IMAGES: Final = 16_384
#: Files with at least this many images get a packed cache beside them (`<file>.packed.npz`).
CACHE_MIN_IMAGES = 65_536
#: Default held-out combinations of `DSprites.split("heldout")`: every heart at posX > 24.
DEFAULT_HOLDOUT: Final[Mapping[str, Any]] = {"shape": "heart", "posX": range(25, 32)}

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
_CACHE_VERSION: Final = 1

Index = int | slice | Sequence[int] | np.ndarray


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


@contextlib.contextmanager
def _progress_bar(
    description: str, enabled: bool, *, download: bool = False
) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar on a terminal's stderr; yields `update(done, total)`."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda done, total: None
        return
    columns = [BarColumn(), DownloadColumn() if download else TaskProgressColumn()]
    with Progress(
        "[progress.description]{task.description}",
        *columns,
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def generate(out: Path | str, progress: bool = True) -> Path:
    """Write the default data (the procedural generator's official-format .npz) to `out`."""
    from causal_sprites.data.render import write_npz

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _progress_bar("generating dSprites", progress) as update:
        write_npz(out, update)
    return out


def ensure_default_data(progress: bool = True) -> Path:
    """The default data file, generated on first use."""
    path = default_path()
    return path if path.exists() else generate(path, progress)


# --- bit packing -------------------------------------------------------------------------------


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


# --- reading official-format files -------------------------------------------------------------


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


def _check_classes(where: str, classes: np.ndarray) -> None:
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
    _check_classes(f"{path}: latents_classes ", classes)
    wrong = ~np.isclose(values, classes_to_values(classes), rtol=0.0, atol=1e-6).all(axis=1)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise CausalSpritesError(
            f"{path}: latents_values row {row} do not match the factor grids at its classes"
        )


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
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
    _, classes, _, kind = _read(path)
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


def download(
    out_dir: Path | str | None = None,
    url: str = OFFICIAL_URL,
    sha256: str | None = None,
    progress: bool = True,
    *,
    num_images: int = NUM_IMAGES,
) -> Path:
    """Fetch an official file into `out_dir` (default `data_dir()`), verify it, then rename it.

    Nothing appears under the final name unless the whole file arrived and passed `verify`.
    """
    parsed = urllib.parse.urlparse(url)
    name = Path(parsed.path).name
    if parsed.scheme not in ("https", "http") or not name:
        raise CausalSpritesError(f"bad download URL {url!r}: expected https://.../<file>")
    out = Path(out_dir) if out_dir is not None else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    known = KNOWN_FILES.get(name)
    expected = sha256 or (known[1] if known else None)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=out)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            _progress_bar(f"downloading {name}", progress, download=True) as update,
        ):
            _fetch(url, f, update)
        try:
            verify(tmp, expected, num_images=num_images)
        except CausalSpritesError as error:
            raise CausalSpritesError(str(error).replace(tmp, url)) from None
        final = out / name
        os.replace(tmp, final)
        return final
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fetch(url: str, out: IO[bytes], update: Callable[[int, int | None], None]) -> None:
    """Stream `url` into `out`; network problems become CausalSpritesError."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = response.length
            while block := response.read(1 << 20):
                out.write(block)
                received += len(block)
                update(received, total)
    except urllib.error.HTTPError as error:
        raise CausalSpritesError(
            f"download of {url} failed: HTTP {error.code} {error.reason}"
        ) from None
    except urllib.error.URLError as error:
        raise CausalSpritesError(f"downloading {url} needs the network: {error.reason}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise CausalSpritesError(
            f"download of {url} broke off after {received} bytes ({type(error).__name__})"
        ) from None
    if total is not None and received != total:
        raise CausalSpritesError(f"download of {url} broke off after {received} of {total} bytes")


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
        _check_classes("classes ", self._classes)
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

    def __len__(self) -> int:
        return len(self.packed)

    def __repr__(self) -> str:
        return f"DSprites({len(self)} images, {self.packed.nbytes / 2**20:.0f} MiB packed)"

    def _rows(self, idx: Index) -> np.ndarray:
        """Row indices as an integer array, bounds-checked."""
        if isinstance(idx, slice):
            return np.arange(len(self))[idx]
        rows = np.asarray(idx)
        if rows.size == 0:
            return rows.astype(np.int64)
        if not np.issubdtype(rows.dtype, np.integer):
            raise CausalSpritesError(f"indices must be integers, got {rows.dtype}")
        bad = (rows < 0) | (rows >= len(self))
        if bad.any():
            raise CausalSpritesError(
                f"index {rows[bad].flat[0]} is out of range 0..{len(self) - 1}"
            )
        return rows

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
            if not 0.0 <= test_fraction <= 1.0:
                raise CausalSpritesError(f"test fraction {test_fraction} is outside [0, 1]")
            order = np.random.default_rng(seed).permutation(len(self))
            num_test = round(len(self) * test_fraction)
            return np.sort(order[num_test:]), np.sort(order[:num_test])
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
