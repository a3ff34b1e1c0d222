"""`data import`: a CSV naming image files, 3dshapes' .h5 (Burgess & Kim 2018), MPI3D's .npz (Gondal
et al. 2019), dSprites' official files or a dataset file, written as the project's dataset file.
"""

from __future__ import annotations

import functools
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final

import h5py
import numpy as np

from causal_sprites.data.dataset import (
    IMAGES_FILE_BYTES,
    chunk_rows,
    describe,
    load_dataset,
    write_dataset,
)
from causal_sprites.data.image_csv import import_csv, number_names, read_spec
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.errors import CausalSpritesError

SHAPES3D_FACTORS: Final = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
#: 3dshapes' hues go round the colour circle; shape's numbers name shapes, in no order.
SHAPES3D_CYCLIC: Final = ("floor_hue", "wall_hue", "object_hue")
SHAPES3D_UNORDERED: Final = ("shape",)
MPI3D_FACTORS: Final = (
    "object_color",
    "object_shape",
    "object_size",
    "camera_height",
    "background_color",
    "horizontal_axis",
    "vertical_axis",
)
#: MPI3D's factors whose classes lie on a line (the others are colours and shapes).
MPI3D_ORDERED: Final = ("object_size", "camera_height", "horizontal_axis", "vertical_axis")
#: MPI3D's factor sizes: the real and realistic sets', then the toy set's.
MPI3D_SIZES: Final = ((6, 6, 2, 3, 3, 40, 40), (4, 4, 2, 3, 3, 40, 40))
_ZIP_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC: Final = b"\x89HDF\r\n\x1a\n"


def import_source(
    src: Path | str,
    out: Path | str,
    factors_yaml: Path | str | None = None,
    *,
    images_file_bytes: int = IMAGES_FILE_BYTES,
) -> tuple[Path, list[str]]:
    """Write SRC (any layout above, told apart by its content) as a dataset file at `out`;
    returns the path and human-readable lines saying what was inferred. `factors_yaml`
    declares a CSV's factor kinds, class order and columns."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise CausalSpritesError(f"no such file: {src}")
    if src.is_dir():
        raise CausalSpritesError(f"{src} is a folder: give the CSV that names its images")
    if out.suffix != ".npz":
        raise CausalSpritesError(f"{out}: a dataset file's name must end in .npz")
    if not out.parent.is_dir():
        raise CausalSpritesError(f"no such folder: {out.parent}")
    layout = _layout(src)
    if factors_yaml is not None and layout != "csv":
        raise CausalSpritesError(f"--factors applies to a CSV; {src} is a {layout} file")
    spec = read_spec(Path(factors_yaml)) if factors_yaml is not None else {}
    importers: dict[str, Callable[[Path, Path, int], list[str]]] = {
        "csv": functools.partial(import_csv, spec=spec),
        "3dshapes": _import_shapes3d,
        "mpi3d": _import_mpi3d,
        "dsprites": _import_dsprites,
        "dataset": _import_dataset,
    }
    try:
        return out, importers[layout](src, out, images_file_bytes)
    except CausalSpritesError as error:
        # Every error names the source; the schema's and the writer's know nothing of it.
        if str(error).startswith(str(src)):
            raise
        raise CausalSpritesError(f"{src}: {error}") from None


def _layout(src: Path) -> str:
    """Which importer reads SRC: a CSV by its suffix, the others by their first bytes and keys."""
    if src.suffix.lower() == ".csv":
        return "csv"
    with src.open("rb") as f:
        head = f.read(8)
    if head[:4] in _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(src) as archive:
                keys = {name.removesuffix(".npy") for name in archive.namelist()}
        except zipfile.BadZipFile as error:
            raise CausalSpritesError(f"{src}: truncated or corrupt zip archive ({error})") from None
        for key, layout in (("schema", "dataset"), ("imgs", "dsprites"), ("images", "mpi3d")):
            if key in keys:
                return layout
        raise CausalSpritesError(
            f"{src}: unknown layout: an .npz with keys {', '.join(sorted(keys)) or 'none'} "
            "(expected a dataset file's schema, dSprites' imgs or MPI3D's images)"
        )
    if head == _HDF5_MAGIC:
        try:
            with h5py.File(src, "r") as file:
                return "dsprites" if "imgs" in file else "3dshapes"
        except OSError as error:
            raise CausalSpritesError(f"{src}: truncated or corrupt HDF5 file ({error})") from None
    raise CausalSpritesError(
        f"{src}: unknown layout: expected a .csv naming images, an .npz or an .h5/.hdf5 file"
    )


def _describe(src: Path, layout: str, schema: Schema, num: int) -> list[str]:
    """The lines an import prints: the source and its layout, then what `describe` says."""
    return [f"{src}: {layout}, {num:,} images", *describe(schema)]


def _import_shapes3d(src: Path, out: Path, images_file_bytes: int) -> list[str]:
    """3dshapes' layout: `images` (N, 64, 64, 3) uint8 and `labels` (N, 6) float64; each label
    column's distinct sorted values become its classes, kept as the factor's values."""
    layout = "images (N, 64, 64, 3) uint8 and labels (N, 6) float64"
    try:
        file = h5py.File(src, "r")
    except OSError as error:
        raise CausalSpritesError(f"{src}: truncated or corrupt HDF5 file ({error})") from None
    with file:
        for key in ("images", "labels"):
            if not isinstance(file.get(key), h5py.Dataset):
                raise CausalSpritesError(f"{src}: no {key} (3dshapes' layout: {layout})")
        images, labels = file["images"], file["labels"]
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise CausalSpritesError(
                f"{src}: images are {images.shape} {images.dtype}, expected (N, H, W, C) uint8"
            )
        if labels.ndim != 2 or labels.shape[1] != len(SHAPES3D_FACTORS):
            raise CausalSpritesError(
                f"{src}: labels are {labels.shape}, expected (N, 6): {', '.join(SHAPES3D_FACTORS)}"
            )
        if len(labels) != len(images):
            raise CausalSpritesError(f"{src}: {len(labels)} labels for {len(images)} images")
        values = np.asarray(labels[()], dtype=np.float64)
        if not np.isfinite(values).all():
            raise CausalSpritesError(f"{src}: labels hold NaN or infinite values")
        factors, codes = [], []
        for name, column in zip(SHAPES3D_FACTORS, values.T, strict=True):
            distinct, code = np.unique(column, return_inverse=True)
            ordered, cyclic = name not in SHAPES3D_UNORDERED, name in SHAPES3D_CYCLIC
            names = number_names(distinct)
            factors.append(categorical(name, names, distinct.tolist(), ordered, cyclic))
            codes.append(code)
        channels = images.shape[3] if images.ndim == 4 else 1
        schema = Schema(src.stem, tuple(factors), (images.shape[1], images.shape[2], channels))
        step = chunk_rows(schema)
        chunks = (images[start : start + step] for start in range(0, len(images), step))
        factor_rows = np.stack(codes, axis=1).astype(np.float64)
        write_dataset(out, chunks, factor_rows, schema, images_file_bytes=images_file_bytes)
    return _describe(src, "3dshapes layout", schema, len(factor_rows))


def mpi3d_sizes(num_images: int) -> tuple[int, ...]:
    """MPI3D's factor sizes for a file of `num_images` images: those whose product it is."""
    for sizes in MPI3D_SIZES:
        if math.prod(sizes) == num_images:
            return sizes
    known = " or ".join(f"{math.prod(s):,} ({'x'.join(map(str, s))})" for s in MPI3D_SIZES)
    raise CausalSpritesError(f"{num_images:,} images: MPI3D's layout has {known}")


#: What a truncated or corrupt zip member raises while it is read.
_ZIP_ERRORS: Final = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npy stream (no pickle involved); C order only."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0
        if version != (1, 0):
            read = np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, *_ZIP_ERRORS) as error:
        raise CausalSpritesError(f"{where} has a corrupt .npy header ({error})") from None
    if fortran and len(shape) > 1:
        raise CausalSpritesError(f"{where} is in Fortran order; expected C order")
    return tuple(shape), dtype


def _read_chunks(
    f: IO[bytes], where: str, shape: tuple[int, ...], step: int
) -> Iterator[np.ndarray]:
    """uint8 arrays of `shape` from a stream, `step` rows at a time."""
    row_bytes = int(np.prod(shape[1:]))
    for start in range(0, shape[0], step):
        rows = min(step, shape[0] - start)
        try:
            data = f.read(rows * row_bytes)
        except _ZIP_ERRORS as error:
            raise CausalSpritesError(f"{where} is truncated or corrupt ({error})") from None
        if len(data) != rows * row_bytes:
            raise CausalSpritesError(f"{where} is truncated")
        yield np.frombuffer(data, np.uint8).reshape(rows, *shape[1:])


def _import_mpi3d(src: Path, out: Path, images_file_bytes: int) -> list[str]:
    """MPI3D's layout: `images` (N, 64, 64, 3) uint8 in the published factor order, the last
    factor fastest; the factors follow from the row index. Streamed: the real set is 12 GB."""
    where = f"{src}: images"
    with zipfile.ZipFile(src) as archive:
        try:
            member = archive.open("images.npy")
        except _ZIP_ERRORS as error:
            raise CausalSpritesError(f"{where} is truncated or corrupt ({error})") from None
        with member:
            shape, dtype = _npy_header(member, where)
            if dtype != np.uint8 or len(shape) not in (3, 4):
                raise CausalSpritesError(
                    f"{where} are {shape} {dtype}, expected (N, H, W, C) uint8"
                )
            sizes = mpi3d_sizes(shape[0])
            rows = np.stack(np.unravel_index(np.arange(shape[0]), sizes), axis=1)
            factors = tuple(
                categorical(n, range(s), ordered=n in MPI3D_ORDERED)
                for n, s in zip(MPI3D_FACTORS, sizes, strict=True)
            )
            channels = shape[3] if len(shape) == 4 else 1
            schema = Schema(src.stem, factors, (shape[1], shape[2], channels))
            chunks = _read_chunks(member, where, shape, chunk_rows(schema))
            write_dataset(
                out, chunks, rows.astype(np.float64), schema, images_file_bytes=images_file_bytes
            )
    return _describe(src, "MPI3D layout", schema, shape[0])


def _import_dsprites(src: Path, out: Path, images_file_bytes: int) -> list[str]:
    """dSprites' official .npz or .hdf5: its five varying factors' classes and 0/1 images."""
    from causal_sprites.data.dsprites import DSprites  # torch: only when dSprites is read
    from causal_sprites.data.factors import SCHEMA

    data = DSprites.load(src)
    step = chunk_rows(SCHEMA)
    chunks = (data.images(slice(start, start + step)) for start in range(0, len(data), step))
    factors = data.classes(slice(None))[:, 1:].astype(np.float64)
    write_dataset(out, chunks, factors, SCHEMA, images_file_bytes=images_file_bytes)
    return _describe(src, "dSprites official file", SCHEMA, len(data))


def _import_dataset(src: Path, out: Path, images_file_bytes: int) -> list[str]:
    """A dataset file, checked on reading and copied through."""
    data = load_dataset(src)
    step = chunk_rows(data.schema)
    chunks = (data.images(slice(start, start + step)) for start in range(0, len(data), step))
    factors = data.factors(slice(None))
    write_dataset(
        out, chunks, factors, data.schema, extra=data.extra, images_file_bytes=images_file_bytes
    )
    return _describe(src, "dataset file", data.schema, len(data))
