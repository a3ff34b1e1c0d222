"""A folder of image files with a CSV of their factors (one row per image, column `file` naming
it), read with Pillow; a factors file (factors.yaml) may declare kinds, class order and the
columns to use.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from causal_sprites.data.dataset import (
    IMAGES_FILE_BYTES,
    chunk_rows,
    describe,
    image_dims,
    write_dataset,
)
from causal_sprites.data.pictures import COLOUR_MODES, GREY_MODES, image_pixels, opaque, size_text
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.errors import CausalSpritesError

#: What a factors file may say, at the top and per factor.
SPEC_KEYS: Final = ("name", "file_column", "columns", "factors")
FACTOR_KEYS: Final = ("kind", "classes", "low", "high", "unit", "ordered", "cyclic")


def number_names(values: np.ndarray) -> list[str]:
    """Short distinct class names of distinct sorted numbers: integers as such, others with the
    fewest significant digits (3 or more) that tell them apart."""
    for digits in range(3, 18):
        names = [
            str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.{digits}g}"
            for v in values
        ]
        if len(set(names)) == len(names):
            return names
    return [repr(float(v)) for v in values]


def _refuse_unknown(mapping: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """One line naming the first key of `mapping` not among `known` (a typo must not pass)."""
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise CausalSpritesError(f"{where} unknown key {unknown[0]!r}; keys are {', '.join(known)}")


def read_spec(path: Path) -> dict[str, Any]:
    """A factors file as a checked mapping (unknown keys refused: a typo must not pass silently)."""
    if not path.is_file():
        raise CausalSpritesError(f"no such file: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CausalSpritesError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, Mapping):
        raise CausalSpritesError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    _refuse_unknown(raw, SPEC_KEYS, f"{path}:")
    columns = raw.get("columns")
    if columns is not None and not (
        isinstance(columns, list) and all(isinstance(c, str) for c in columns)
    ):
        raise CausalSpritesError(f"{path}: columns must be a list of column names")
    declared = raw.get("factors") or {}
    if not isinstance(declared, Mapping):
        raise CausalSpritesError(f"{path}: factors must map column names to declarations")
    for name, decl in declared.items():
        if not isinstance(decl, Mapping):
            raise CausalSpritesError(f"{path}: factor {name!r} must be a mapping")
        _refuse_unknown(decl, FACTOR_KEYS, f"{path}: factor {name!r} has")
        if decl.get("kind", "categorical") not in ("categorical", "continuous"):
            raise CausalSpritesError(
                f"{path}: factor {name!r} has kind {decl['kind']!r}; "
                "kinds are categorical and continuous"
            )
        if "classes" in decl and not isinstance(decl["classes"], list):
            raise CausalSpritesError(f"{path}: factor {name!r}: classes must be a list")
        for key in ("low", "high"):
            if key in decl and not isinstance(decl[key], int | float):
                raise CausalSpritesError(f"{path}: factor {name!r}: {key} must be a number")
        for key in ("ordered", "cyclic"):
            if key in decl and not isinstance(decl[key], bool):
                raise CausalSpritesError(f"{path}: factor {name!r}: {key} must be true or false")
    return {**raw, "factors": dict(declared)}


def _read_csv(src: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows (stripped cells) and each row's line number; blank lines skipped."""
    try:
        with src.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [cell.strip() for cell in next(reader, [])]
            rows, lines = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise CausalSpritesError(
                        f"{src} line {reader.line_num}: {len(row)} fields, expected {len(header)}"
                    )
                rows.append([cell.strip() for cell in row])
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as error:
        raise CausalSpritesError(f"{src} is not a readable UTF-8 CSV ({error})") from None
    for name in header:
        if header.count(name) > 1:
            raise CausalSpritesError(f"{src}: column {name!r} appears twice")
    if not rows:
        raise CausalSpritesError(f"{src} has no rows")
    return header, rows, lines


def _numbers(cells: list[str]) -> np.ndarray | None:
    """The cells as finite numbers, or None when any is not one."""
    out = np.empty(len(cells))
    for k, cell in enumerate(cells):
        try:
            out[k] = float(cell)
        except ValueError:
            return None
        if not math.isfinite(out[k]):
            return None
    return out


def _column_factor(
    src: Path, name: str, cells: list[str], lines: list[int], decl: Mapping[str, Any]
) -> tuple[Factor, np.ndarray, str]:
    """A CSV column as a factor, its values (N,) (class index or value) and how it was read."""
    numbers = _numbers(cells)
    where = f"{src} line"
    # Classes that are numbers lie on a line unless the factors file says otherwise.
    ordered, cyclic = decl.get("ordered", numbers is not None), decl.get("cyclic", False)
    if decl.get("kind") == "continuous":
        if numbers is None:
            k = next(k for k, cell in enumerate(cells) if _numbers([cell]) is None)
            raise CausalSpritesError(
                f"{where} {lines[k]}: {name} is {cells[k]!r}, not a number (declared continuous)"
            )
        low, high = decl.get("low", numbers.min()), decl.get("high", numbers.max())
        factor = Factor(
            name, "continuous", low=float(low), high=float(high), unit=str(decl.get("unit", ""))
        )
        outside = np.flatnonzero((numbers < float(low)) | (numbers > float(high)))
        if outside.size:
            k = int(outside[0])
            raise CausalSpritesError(
                f"{where} {lines[k]}: {name} is {cells[k]}, outside its range {low}..{high}"
            )
        how = "declared" if {"low", "high"} <= set(decl) else "range of the data"
        return factor, numbers, how
    if "classes" in decl:
        declared = decl["classes"]
        numeric = numbers is not None and all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in declared
        )
        keys: list[Any] = [float(c) for c in declared] if numeric else [str(c) for c in declared]
        found: list[Any] = list(numbers) if numbers is not None and numeric else cells
        index = {key: k for k, key in enumerate(keys)}
        codes = np.empty(len(cells))
        for row, key in enumerate(found):
            if key not in index:
                raise CausalSpritesError(
                    f"{where} {lines[row]}: {name} is {cells[row]!r}, not one of its declared "
                    f"classes {', '.join(map(str, declared))}"
                )
            codes[row] = index[key]
        empty = [str(declared[k]) for k in range(len(keys)) if not (codes == k).any()]
        if empty:
            raise CausalSpritesError(
                f"{src}: {name} class {empty[0]!r}, declared in the factors file, has no rows"
            )
        values = keys if numeric else None
        factor = categorical(name, [str(c) for c in declared], values, ordered, cyclic)
        return factor, codes, "order declared"
    if numbers is not None:
        distinct, inverse = np.unique(numbers, return_inverse=True)
        factor = categorical(name, number_names(distinct), distinct.tolist(), ordered, cyclic)
        return factor, inverse.astype(np.float64), "numbers, sorted"
    classes = sorted(set(cells))
    index = {c: k for k, c in enumerate(classes)}
    codes = np.array([index[c] for c in cells], dtype=np.float64)
    return categorical(name, classes, None, ordered, cyclic), codes, "text, sorted"


def import_csv(
    src: Path,
    out: Path,
    images_file_bytes: int = IMAGES_FILE_BYTES,
    *,
    spec: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write a CSV naming one image per row (column `file`, relative to the CSV) and its
    factors as a dataset file; returns lines saying what was inferred. Rows keep their order;
    `spec` is the factors file as `read_spec` gives it."""
    spec = spec or {}
    header, rows, lines = _read_csv(src)
    file_column = str(spec.get("file_column", "file"))
    columns = spec.get("columns") or [c for c in header if c != file_column]
    declared: dict[str, Any] = spec.get("factors", {})
    for name in [file_column, *columns, *declared]:
        if name not in header:
            raise CausalSpritesError(f"{src}: no column {name!r} (columns: {', '.join(header)})")
    unused = [name for name in declared if name not in columns]
    if unused:
        raise CausalSpritesError(f"the factors file declares {unused[0]!r}, not among the columns")
    if not columns:
        raise CausalSpritesError(f"{src}: no factor columns beside {file_column!r}")
    for row, cells in enumerate(rows):
        empty = [header[k] for k, cell in enumerate(cells) if not cell]
        if empty:
            raise CausalSpritesError(f"{src} line {lines[row]}: column {empty[0]!r} is empty")
    factors, values, hows = [], [], []
    for name in columns:
        cells = [r[header.index(name)] for r in rows]
        factor, column_values, how = _column_factor(src, name, cells, lines, declared.get(name, {}))
        factors.append(factor)
        values.append(column_values)
        hows.append(how)
    paths = [src.parent / r[header.index(file_column)] for r in rows]
    shape, channels, scale = _scan_images(src, paths, lines)
    schema = Schema(
        name=str(spec.get("name", src.stem)),
        factors=tuple(factors),
        image_shape=(*shape, channels),
        binary=scale is not None,
    )
    write_dataset(
        out,
        _decode_images(paths, schema, scale or 1),
        np.stack(values, axis=1),
        schema,
        images_file_bytes=images_file_bytes,
    )
    return [f"{src}: CSV of image files, {len(rows):,} images", *describe(schema, hows)]


def _open_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError  # pillow: only when images are read

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        raise CausalSpritesError(f"{path} is not a readable image ({error})") from None


def _scan_images(
    src: Path, paths: list[Path], lines: list[int]
) -> tuple[tuple[int, int], int, int | None]:
    """Every image's size and mode, which must all agree: (H, W), channels, and for binary
    images the value of a set pixel (1 or 255; None for 8-bit images)."""
    first: tuple[Path, tuple[int, int], str] | None = None
    seen: set[int] = set()
    for path, line in zip(paths, lines, strict=True):
        if not path.is_file():
            raise CausalSpritesError(f"{src} line {line}: no such image: {path}")
        with _open_image(path) as image:
            size, mode = (image.height, image.width), image.mode
            grey = mode in GREY_MODES
            if not grey and mode not in COLOUR_MODES:
                raise CausalSpritesError(
                    f"{path} has mode {mode}: save it as 8-bit grey (L) or colour (RGB)"
                )
            if first is None:
                first = (path, size, "grey" if grey else "RGB")
            if size != first[1]:
                raise CausalSpritesError(
                    f"{path} is {size_text(*size)} but {first[0]} is "
                    f"{first[1][0]}x{first[1][1]}: all images must share a size"
                )
            if ("grey" if grey else "RGB") != first[2]:
                raise CausalSpritesError(
                    f"{path} is {'grey' if grey else 'RGB'} but {first[0]} is {first[2]}: "
                    "all images must share a mode"
                )
            # Binary needs every grey pixel; once a third value shows up, headers suffice.
            if grey and seen <= {0, 1, 255}:
                seen |= set(np.unique(np.asarray(image.convert("L"))).tolist())
    assert first is not None
    channels = 1 if first[2] == "grey" else 3
    scale = None
    if channels == 1 and (seen <= {0, 1} or seen <= {0, 255}):
        scale = 255 if 255 in seen else 1
    return first[1], channels, scale


def _decode_images(paths: list[Path], schema: Schema, scale: int) -> Iterator[np.ndarray]:
    """Images as uint8 chunks (B, H, W) or (B, H, W, 3); binary ones divided down to 0/1."""
    step = chunk_rows(schema)
    for start in range(0, len(paths), step):
        chunk = np.empty((len(paths[start : start + step]), *image_dims(schema)), np.uint8)
        for k, path in enumerate(paths[start : start + step]):
            with _open_image(path) as image:
                pixels, mode = image_pixels(image, str(path))
                chunk[k] = opaque(pixels, str(path), mode)
        yield chunk // scale
