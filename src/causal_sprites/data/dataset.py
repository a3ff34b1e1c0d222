"""The project's one dataset file: images, factors and their schema in one `.npz` that plain numpy
reads, never pickled; a large set keeps its images in a raw `.npy` beside it, read row by row.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError

#: Image sets of more pixel bytes than this go to a raw `.npy` beside the `.npz`.
IMAGES_FILE_BYTES: Final = 512 * 2**20
#: Pixel bytes per chunk when streaming images in or out (64 MB).
CHUNK_BYTES: Final = 64 * 2**20
#: Keys of the `.npz` with a fixed meaning; any other key is an extra array kept as it is.
KEYS: Final = ("images", "images_file", "factors", "schema")
_ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")
_UMASK: Final = os.umask(0)
os.umask(_UMASK)

Index = int | slice | Sequence[int] | np.ndarray


class Dataset:
    """N images, uint8 (N, H, W) for grey or (N, H, W, C) for colour, with their factors (N, K)
    float64 (a categorical factor's class index, a continuous factor's value) and schema.

    `images` may be a read-only memmap of a raw `.npy`; its rows are then read from the file as
    asked for, so the resident set stays bounded however large the file.
    """

    def __init__(
        self,
        schema: Schema,
        images: np.ndarray,
        factors: np.ndarray,
        *,
        path: Path | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        where = f"{path}: " if path else ""
        factors = np.asarray(factors, dtype=np.float64)
        check_factors(where, factors, schema)
        check_image_layout(where, images.shape, images.dtype, schema, len(factors))
        # A memmapped set was checked chunk by chunk when written; scanning GBs on every load
        # would cost what the memmap saves.
        if schema.binary and not isinstance(images, np.memmap):
            check_binary(where, images, 0)
        self.schema = schema
        self.path = path
        self.extra = dict(extra or {})
        self._images = images
        self._factors = factors

    def __len__(self) -> int:
        return len(self._factors)

    def __repr__(self) -> str:
        height, width, channels = self.schema.image_shape
        store = "memory-mapped" if self.memory_mapped else "in memory"
        return (
            f"Dataset({self.schema.name}: {len(self)} images {height}x{width}x{channels}, {store})"
        )

    @property
    def memory_mapped(self) -> bool:
        """Whether the images stay in a file beside the dataset, read as asked for."""
        return isinstance(self._images, np.memmap)

    def _rows(self, idx: Index) -> np.ndarray:
        return checked_rows(idx, len(self))

    def images(self, idx: Index) -> np.ndarray:
        """Images of rows `idx`: uint8 (B, H, W) grey or (B, H, W, C) colour; an int gives one."""
        rows = self._rows(idx)
        if not isinstance(self._images, np.memmap):
            return self._images[rows]
        return _read_rows(self._images, rows)

    def factors(self, idx: Index) -> np.ndarray:
        """Factors (B, K) float64 of rows `idx`, as stored (class index or value)."""
        return self._factors[self._rows(idx)]

    def summary(self) -> dict[str, Any]:
        """What `data info --json` prints: the schema, image count, counts per class of each
        categorical factor and the range [min, max] each continuous one takes."""
        counts: dict[str, list[int]] = {}
        ranges: dict[str, list[float]] = {}
        for column, factor in enumerate(self.schema.factors):
            values = self._factors[:, column]
            if factor.kind == "categorical":
                counts[factor.name] = np.bincount(
                    values.astype(np.int64), minlength=factor.size
                ).tolist()
            else:
                ranges[factor.name] = [float(values.min()), float(values.max())]
        return {
            "schema": self.schema.to_json(),
            "num_images": len(self),
            "image_shape": list(self.schema.image_shape),
            "counts": counts,
            "ranges": ranges,
        }


def _read_rows(images: np.memmap, rows: np.ndarray) -> np.ndarray:
    """Rows of a memmapped `.npy`, read from the file itself: pages touched through the map
    would count in this process's resident set, pages read by `readinto` do not.

    Each run of consecutive rows is one read.
    """
    flat = rows.reshape(-1)
    row_shape = images.shape[1:]
    row_bytes = int(np.prod(row_shape))
    out = np.empty((len(flat), *row_shape), dtype=np.uint8)
    if not len(flat):
        return out.reshape(rows.shape + row_shape)
    starts = np.flatnonzero(np.diff(flat, prepend=-2) != 1)
    ends = np.append(starts[1:], len(flat))
    assert images.filename is not None
    with open(images.filename, "rb") as f:
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            f.seek(images.offset + int(flat[start]) * row_bytes)
            f.readinto(out[start:end].data.cast("B"))
    return out.reshape(rows.shape + row_shape)


# --- checks --------------------------------------------------------------------------------------


def checked_rows(idx: Any, num_rows: int) -> np.ndarray:
    """Row indices (an int, a sequence, an array or a slice) as an integer array, bounds-checked
    against `num_rows` (one-line errors)."""
    if isinstance(idx, slice):
        return np.arange(num_rows)[idx]
    rows = np.asarray(idx)
    if rows.size == 0:
        return rows.astype(np.int64)
    if not np.issubdtype(rows.dtype, np.integer):
        raise CausalSpritesError(f"indices must be integers, got {rows.dtype}")
    bad = (rows < 0) | (rows >= num_rows)
    if bad.any():
        raise CausalSpritesError(f"index {rows[bad].flat[0]} is out of range 0..{num_rows - 1}")
    return rows


def random_split(num_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) rows: a seeded `test_fraction` of the rows for testing."""
    if not 0.0 <= test_fraction <= 1.0:
        raise CausalSpritesError(f"test fraction {test_fraction} is outside [0, 1]")
    order = np.random.default_rng(seed).permutation(num_rows)
    num_test = round(num_rows * test_fraction)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def image_dims(schema: Schema) -> tuple[int, ...]:
    """The per-image array shape of a schema: (H, W) for grey, (H, W, C) for colour."""
    height, width, channels = schema.image_shape
    return (height, width) if channels == 1 else (height, width, channels)


def check_image_layout(
    where: str, shape: tuple[int, ...], dtype: np.dtype, schema: Schema, num: int
) -> None:
    """Images must be uint8 (N, H, W) or (N, H, W, C) as the schema says, one per factor row."""
    if dtype != np.uint8:
        raise CausalSpritesError(f"{where}images are {dtype}, expected uint8")
    expected = (num, *image_dims(schema))
    if tuple(shape[1:]) != expected[1:]:
        want = ", ".join(["N", *map(str, expected[1:])])
        raise CausalSpritesError(
            f"{where}images are {tuple(shape)}, expected ({want}) for the schema's image shape "
            f"{list(schema.image_shape)}"
        )
    if shape[0] != num:
        raise CausalSpritesError(f"{where}{shape[0]} images but {num} rows of factors")


def check_binary(where: str, images: np.ndarray, first_row: int) -> None:
    """A binary schema's images hold only 0 and 1."""
    flat = images.reshape(len(images), -1)
    if flat.size and flat.max() > 1:
        row = first_row + int(np.argmax((flat > 1).any(axis=1)))
        raise CausalSpritesError(
            f"{where}image {row} has pixels other than 0/1 but the schema says binary"
        )


def check_factors(where: str, factors: np.ndarray, schema: Schema) -> None:
    """Factors must be (N, K), N >= 1: class indices of categorical factors, values of
    continuous ones within their range."""
    count = len(schema.factors)
    if factors.ndim != 2 or factors.shape[1] != count:
        raise CausalSpritesError(
            f"{where}factors are {factors.shape}, expected (N, {count}) for factors "
            f"{', '.join(schema.names)}"
        )
    if not len(factors):
        raise CausalSpritesError(f"{where}the dataset has no images")
    for column, factor in enumerate(schema.factors):
        values = factors[:, column]
        if factor.kind == "categorical":
            bad = ~np.isin(values, np.arange(factor.size))
            allowed = f"a class index 0..{factor.size - 1}"
        else:
            assert factor.low is not None and factor.high is not None
            bad = ~((values >= factor.low) & (values <= factor.high))
            unit = f" {factor.unit}" if factor.unit else ""
            allowed = f"within its range {factor.low:g}..{factor.high:g}{unit}"
        if bad.any():
            row = int(np.argmax(bad))
            raise CausalSpritesError(
                f"{where}factors row {row}: {factor.name} is {values[row]:g}, not {allowed}"
            )


# --- describing ----------------------------------------------------------------------------------


def chunk_rows(schema: Schema) -> int:
    """Images per streamed chunk (about CHUNK_BYTES of pixels)."""
    return max(1, CHUNK_BYTES // int(np.prod(schema.image_shape)))


def factor_line(factor: Factor, how: str = "") -> str:
    """`factor hue: categorical, 3 classes: red, green, blue` (`how` it was inferred, if said);
    classes on a line or a circle are called ordered or cyclic."""
    note = f" ({how})" if how else ""
    if factor.kind == "continuous":
        unit = f" {factor.unit}" if factor.unit else ""
        return f"factor {factor.name}: continuous, {factor.low:g}..{factor.high:g}{unit}{note}"
    shown = ", ".join(factor.classes[:8]) + (", ..." if factor.size > 8 else "")
    order = "cyclic " if factor.cyclic else "ordered " if factor.ordered else ""
    return f"factor {factor.name}: {order}categorical, {factor.size} classes: {shown}{note}"


def describe(schema: Schema, hows: Sequence[str] | None = None) -> list[str]:
    """Lines a person reads: the images' shape and kind, then one line per factor."""
    height, width, channels = schema.image_shape
    pixels = "binary (0/1)" if schema.binary else "8-bit"
    colour = "grey" if channels == 1 else "RGB"
    hows = hows or [""] * len(schema.factors)
    return [
        f"images: {height}x{width} pixels (height x width), {colour}, {pixels}",
        *(factor_line(f, how) for f, how in zip(schema.factors, hows, strict=True)),
    ]


# --- writing -------------------------------------------------------------------------------------


def images_file_name(path: Path) -> str:
    """The raw `.npy` beside a dataset `.npz` that holds its images when they are large."""
    return f"{path.stem}.images.npy"


def write_dataset(
    path: Path | str,
    images: np.ndarray | Iterable[np.ndarray],
    factors: np.ndarray,
    schema: Schema,
    *,
    extra: Mapping[str, np.ndarray] | None = None,
    images_file_bytes: int = IMAGES_FILE_BYTES,
) -> Path:
    """Write a dataset file atomically: images (N, H, W) or (N, H, W, C) uint8, as one array or
    as chunks along N (streamed, so a set larger than memory imports), factors (N, K).

    Images of more than `images_file_bytes` bytes go to a raw `.npy` beside the `.npz`. Both are
    written under temporary names in the same folder and renamed when whole: an error or an
    interrupt leaves no partial output.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise CausalSpritesError(f"{path}: a dataset file's name must end in .npz")
    factors = np.asarray(factors, dtype=np.float64)
    check_factors("", factors, schema)
    extra = dict(extra or {})
    for key, array in extra.items():
        if key in KEYS or not key.isidentifier() or np.asarray(array).dtype.hasobject:
            raise CausalSpritesError(f"extra array {key!r}: needs a free name and plain data")
    shape = (len(factors), *image_dims(schema))
    external = int(np.prod(shape)) > images_file_bytes
    chunks = _chunks(images) if isinstance(images, np.ndarray) else iter(images)
    temporaries: list[Path] = []
    try:
        npz_tmp = _temporary(path, temporaries)
        with zipfile.ZipFile(npz_tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            _write_member(archive, "factors", factors)
            _write_member(archive, "schema", np.array(schema.dumps()))
            for key, array in extra.items():
                _write_member(archive, key, np.asarray(array))
            if external:
                _write_member(archive, "images_file", np.array(images_file_name(path)))
                npy_tmp = _temporary(path.with_name(images_file_name(path)), temporaries)
                with npy_tmp.open("wb") as f:
                    _write_images(f, shape, chunks, schema)
            else:
                with archive.open("images.npy", "w", force_zip64=True) as f:
                    _write_images(f, shape, chunks, schema)
        for tmp in temporaries:
            with tmp.open("rb") as written:
                os.fsync(written.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        if external:
            os.replace(npy_tmp, path.with_name(images_file_name(path)))
        os.replace(npz_tmp, path)
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise
    return path


def _temporary(path: Path, temporaries: list[Path]) -> Path:
    """A new empty file beside `path` (hidden, `.part`), recorded for cleanup."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    temporaries.append(Path(name))
    return Path(name)


def _chunks(images: np.ndarray) -> Iterator[np.ndarray]:
    """Slices of an image array of about CHUNK_BYTES each."""
    step = max(1, CHUNK_BYTES // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), step):
        yield images[start : start + step]


def _write_member(archive: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


def _write_images(
    f: IO[bytes], shape: tuple[int, ...], chunks: Iterator[np.ndarray], schema: Schema
) -> None:
    """An `.npy` of `shape` uint8 written chunk by chunk, each chunk checked as it comes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    written = 0
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if schema.image_shape[2] == 1 and chunk.ndim == 4 and chunk.shape[3] == 1:
            chunk = chunk[..., 0]
        check_image_layout("", (shape[0], *chunk.shape[1:]), chunk.dtype, schema, shape[0])
        if written + len(chunk) > shape[0]:
            raise CausalSpritesError(f"more images than the {shape[0]} rows of factors")
        if schema.binary:
            check_binary("", chunk, written)
        f.write(np.ascontiguousarray(chunk).data.cast("B"))
        written += len(chunk)
    if written != shape[0]:
        raise CausalSpritesError(f"{written} images but {shape[0]} rows of factors")


# --- reading -------------------------------------------------------------------------------------


def load_dataset(path: Path | str) -> Dataset:
    """Read and check a dataset file (keys, shapes against the schema, factor values); large
    images stay in their file, memory-mapped."""
    path = Path(path)
    if not path.exists():
        raise CausalSpritesError(f"no such file: {path}")
    if path.is_dir():
        raise CausalSpritesError(f"{path} is a directory, not a dataset file")
    with path.open("rb") as f:
        if f.read(4) not in _ZIP_MAGIC:
            raise CausalSpritesError(f"{path} is not a dataset file (an .npz)")
    try:
        # Our own handle: np.load leaks the one it opens when the zip turns out corrupt.
        with path.open("rb") as f, np.load(f, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "schema" not in keys:
                raise CausalSpritesError(
                    f"{path} is not a dataset file (no schema); "
                    "causal-sprites data import makes one of it"
                )
            for key, either in (("factors", {"factors"}), ("images", {"images", "images_file"})):
                if not keys & either:
                    raise CausalSpritesError(f"{path}: missing key {key}")
            schema = _schema(path, _text(path, archive["schema"], "schema"))
            factors = archive["factors"]
            if factors.dtype != np.float64:
                raise CausalSpritesError(f"{path}: factors are {factors.dtype}, expected float64")
            if "images" in keys:
                images = archive["images"]
            else:
                images = _open_images_file(path, _text(path, archive["images_file"], "images_file"))
            extra = {k: archive[k] for k in sorted(keys - set(KEYS))}
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise CausalSpritesError(f"{path}: truncated or corrupt zip archive ({error})") from None
    except (ValueError, OSError) as error:
        raise CausalSpritesError(f"{path}: unreadable dataset file ({error})") from None
    return Dataset(schema, images, factors, path=path, extra=extra)


def _schema(path: Path, text: str) -> Schema:
    """The schema a dataset file holds; its errors name the file."""
    try:
        return Schema.from_json(text)
    except CausalSpritesError as error:
        raise CausalSpritesError(f"{path}: {error}") from None


def _text(path: Path, array: np.ndarray, key: str) -> str:
    """The string a 0-d text array holds."""
    if array.dtype.kind != "U" or array.ndim != 0:
        raise CausalSpritesError(f"{path}: {key} must be one string, got {array.dtype}")
    return str(array)


def _open_images_file(path: Path, name: str) -> np.memmap:
    """The memmap of the raw `.npy` a dataset names; only a file beside it, never a path."""
    if Path(name).name != name or not name.endswith(".npy"):
        raise CausalSpritesError(f"{path}: images_file must name a .npy beside it, got {name!r}")
    images_path = path.with_name(name)
    if not images_path.is_file():
        raise CausalSpritesError(f"{path}: its images file {images_path} is missing")
    with images_path.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise CausalSpritesError(f"{images_path} is not a raw .npy array")
    images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    assert isinstance(images, np.memmap)
    return images
