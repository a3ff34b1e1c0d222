"""The procedural dSprites generator: exact binary rasterisation of the square, ellipse and heart.

Geometry from `dsprites-geometry.md` (measured against the official frames in `reference/`), with
the heart's constants refitted to those frames.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np

from causal_sprites.data.factors import (
    ALL_FACTORS,
    ALL_SIZES,
    NUM_IMAGES,
    SIZES,
    VALUES,
    classes_to_values,
    index_to_classes,
)
from causal_sprites.errors import CausalSpritesError

FILENAME: Final = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
IMAGE_SIZE: Final = 64
#: Outline vertices snap to this grid (1/256 pixel), as a GPU does; coordinates are then integers.
SUBPIXEL: Final = 256
#: Sprites are drawn on a PATCH x PATCH tile centred on their position's pixel corner, then pasted;
#: every sprite lies within 14.6 px of that corner.
PATCH: Final = 32
#: The heart: x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t at HEART_SAMPLES evenly
#: spaced t, mapped to u = HEART_U x, v = HEART_V y + HEART_V0 pixels. Refitted to `reference/`
#: from the geometry note's (360, 0.5996, -0.6623, -1.436): 316 rather than 312 of 320 frames.
HEART_SAMPLES: Final = 180
HEART_U: Final = 0.59975
HEART_V: Final = -0.6624
HEART_V0: Final = -1.4365
#: Outlines (shape, scale, orientation) per chunk of the full set, 1024 images each; `render`
#: works in batches of as many images.
CHUNK_OUTLINES: Final = 8
_HALF: Final = SUBPIXEL // 2
_ROW: Final = PATCH + 1  # one spare column per tile row catches crossings right of the tile


@cache
def _unit_outline(shape: int) -> tuple[np.ndarray, np.ndarray]:
    """Outline (u, v) in pixels at scale 1, orientation 0, v pointing down: (E,), (E,)."""
    if shape == 0:
        half = 19.2 / 2
        return np.array([-half, half, half, -half]), np.array([-half, -half, half, half])
    if shape == 1:
        angle = 2 * np.pi * np.arange(64) / 64
        return 12.78 * np.cos(angle), 7.22 * np.sin(angle)
    t = 2 * np.pi * np.arange(HEART_SAMPLES) / HEART_SAMPLES
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return HEART_U * x, HEART_V * y + HEART_V0


def _turn(
    shape: int, scale: np.ndarray, cos: np.ndarray, sin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Outline offsets from the centre, scaled and turned (scale, cos, sin broadcast against the
    outline's last axis): the one formula of the grid's and of any value's sprites."""
    u, v = _unit_outline(shape)
    return scale * (u * cos + v * sin), scale * (-u * sin + v * cos)


@cache
def _offsets(shape: int) -> tuple[np.ndarray, np.ndarray]:
    """Scaled, rotated outline offsets from the centre, (6, 40, E) each: (scale, orientation)."""
    cos = np.cos(VALUES["orientation"])[None, :, None]
    sin = np.sin(VALUES["orientation"])[None, :, None]
    return _turn(shape, VALUES["scale"][:, None, None], cos, sin)


def _snap(offset: np.ndarray, pos: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Absolute coordinate 16 + 32 pos + offset snapped to the subpixel grid, then made relative
    to the corner of pixel 16 + k, the centre of the sprite's tile: integers (..., E). The
    snapped outline is the same whichever k; k only says where the tile goes."""
    centre = 16 + 32 * pos
    snapped = np.rint((centre[..., None] + offset) * SUBPIXEL).astype(np.int64)
    return snapped - (SUBPIXEL * (16 + k))[..., None]


def _rasterise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tiles (P, PATCH, PATCH) uint8 of polygons with integer vertices (P, E) relative to the tile
    centre: a pixel is on when its centre lies strictly inside (even-odd rule, scanline crossings).
    """
    num, edges = x.shape
    x1, y1 = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    # An edge crosses the rows whose centre 256 m + 128 lies in [min y, max y).
    row_lo = -((_HALF - np.minimum(y, y1)) // SUBPIXEL)
    row_hi = -((_HALF - np.maximum(y, y1)) // SUBPIXEL)
    count = (row_hi - row_lo).ravel()
    edge = np.repeat(np.arange(num * edges), count)
    first = np.cumsum(count) - count
    row = row_lo.ravel()[edge] + np.arange(edge.size) - first[edge]
    xa, ya, xb, yb = x.ravel()[edge], y.ravel()[edge], x1.ravel()[edge], y1.ravel()[edge]
    den = yb - ya
    numer = xa * den + (SUBPIXEL * row + _HALF - ya) * (xb - xa)
    sign = np.sign(den)
    numer, den = numer * sign, den * sign
    # The crossing is at numer / den; columns n with centre 256 n + 128 strictly right of it
    # start at `col`; a centre exactly on it lies on the outline.
    col, rem = np.divmod(numer - _HALF * den, SUBPIXEL * den)
    col += 1
    tile_row = (edge // edges) * PATCH + row + PATCH // 2
    toggles = np.bincount(
        tile_row * _ROW + np.clip(col + PATCH // 2, 0, PATCH),
        minlength=num * PATCH * _ROW,
    ).astype(np.uint8)
    tiles = np.cumsum(toggles.reshape(num, PATCH, _ROW), axis=2, dtype=np.uint8)[..., :PATCH] & 1
    flat = tiles.reshape(-1)
    flat[tile_row[rem == 0] * PATCH + col[rem == 0] - 1 + PATCH // 2] = 0
    _clear_boundary(flat, x, y, x1, y1)
    return tiles


def _clear_boundary(
    flat: np.ndarray, x: np.ndarray, y: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> None:
    """Turn off pixels whose centre is a vertex or lies on a horizontal edge: the crossings
    miss them."""
    centre = ((x - _HALF) % SUBPIXEL == 0) & ((y - _HALF) % SUBPIXEL == 0)
    tile, _ = np.nonzero(centre)
    flat[_pixel(tile, x[centre], y[centre])] = 0
    level = (y == y1) & ((y - _HALF) % SUBPIXEL == 0)
    if not level.any():
        return
    tile, _ = np.nonzero(level)
    lo, hi = np.minimum(x, x1)[level], np.maximum(x, x1)[level]
    col_lo = -((_HALF - lo) // SUBPIXEL)
    count = (hi - _HALF) // SUBPIXEL + 1 - col_lo
    which = np.repeat(np.arange(tile.size), count)
    first = np.cumsum(count) - count
    col = col_lo[which] + np.arange(which.size) - first[which]
    flat[_pixel(tile[which], SUBPIXEL * col + _HALF, y[level][which])] = 0


def _pixel(tile: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Flat tile index of the pixels whose centres are (x, y) (relative integer coordinates)."""
    row = (y - _HALF) // SUBPIXEL + PATCH // 2
    col = (x - _HALF) // SUBPIXEL + PATCH // 2
    return (tile * PATCH + row) * PATCH + col


def _validate(classes: np.ndarray) -> np.ndarray:
    """Class tuples (B, 5) of a (B, 5) or (B, 6) integer array; raises on bad shape or range."""
    array = np.asarray(classes)
    if array.ndim != 2 or array.shape[1] not in (5, 6):
        raise CausalSpritesError(
            f"classes must have shape (B, 5) or (B, 6) (color first), got {array.shape}"
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise CausalSpritesError(f"classes must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    names, sizes = ALL_FACTORS[-array.shape[1] :], ALL_SIZES[-array.shape[1] :]
    for column, (name, size) in enumerate(zip(names, sizes, strict=True)):
        bad = (array[:, column] < 0) | (array[:, column] >= size)
        if bad.any():
            value = int(array[bad, column][0])
            raise CausalSpritesError(f"{name} class {value} is out of range 0..{size - 1}")
    return array[:, -5:]


def render(classes: np.ndarray) -> np.ndarray:
    """Images (B, 64, 64) uint8 0/1 of class tuples (B, 5) (shape, scale, orientation, posX,
    posY) or (B, 6) with color first."""
    classes = _validate(classes)
    _, scale, orientation, kx, ky = classes.T

    def offsets(shape: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = _offsets(shape)
        return dx[scale[rows], orientation[rows]], dy[scale[rows], orientation[rows]]

    return _draw(classes[:, 0], offsets, VALUES["posX"][kx], VALUES["posY"][ky], kx, ky)


def render_values(
    shape: np.ndarray | int,
    scale: np.ndarray | float,
    orientation: np.ndarray | float,
    pos_x: np.ndarray | float,
    pos_y: np.ndarray | float,
) -> np.ndarray:
    """Images (B, 64, 64) uint8 0/1 of sprites at any scale (0 < scale <= 1), orientation
    (radians) and position (posX, posY in [0, 1]), shape a class 0..2; arguments broadcast to
    (B,). On the grid's values, the very images `render` draws of their classes."""
    shapes, values = _validate_values(shape, scale, orientation, pos_x, pos_y)
    scales, orientations, xs, ys = values
    cos, sin = np.cos(orientations)[:, None], np.sin(orientations)[:, None]

    def offsets(kind: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _turn(kind, scales[rows, None], cos[rows], sin[rows])

    # Each tile is centred on the pixel corner nearest the sprite's centre: it holds the sprite.
    kx, ky = (np.rint(32 * pos).astype(np.int64) for pos in (xs, ys))
    return _draw(shapes, offsets, xs, ys, kx, ky)


#: What `render_values` takes: each value's name, the test it must pass and what that asks.
_VALUE_CHECKS: Final[tuple[tuple[str, Callable[[np.ndarray], np.ndarray], str], ...]] = (
    ("scale", lambda a: (a > 0) & (a <= 1), "in (0, 1]"),
    ("orientation", np.isfinite, "a finite number of radians"),
    ("posX", lambda a: (a >= 0) & (a <= 1), "in [0, 1]"),
    ("posY", lambda a: (a >= 0) & (a <= 1), "in [0, 1]"),
)


def _validate_values(
    shape: np.ndarray | int, *values: np.ndarray | float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shape classes (B,) int64 and the values (B,) float64 each, broadcast; one-line errors
    on a bad shape class or a value out of its range (NaN included)."""
    try:
        shapes, *arrays = np.broadcast_arrays(*(np.atleast_1d(a) for a in (shape, *values)))
    except ValueError:
        raise CausalSpritesError("shape, scale, orientation, posX, posY do not broadcast") from None
    if shapes.ndim != 1:
        raise CausalSpritesError(
            f"sprite values must be numbers or (B,) arrays, got {shapes.shape}"
        )
    if shapes.size and not np.issubdtype(shapes.dtype, np.integer):
        raise CausalSpritesError(f"shape must be a class index (integer), got {shapes.dtype}")
    bad = (shapes < 0) | (shapes >= SIZES[0])
    if bad.any():
        raise CausalSpritesError(f"shape class {shapes[bad][0]} is out of range 0..{SIZES[0] - 1}")
    out = []
    for (name, test, wanted), array in zip(_VALUE_CHECKS, arrays, strict=True):
        array = array.astype(np.float64)
        bad = ~test(array)
        if bad.any():
            raise CausalSpritesError(f"{name} {array[bad][0]:g} is not {wanted}")
        out.append(array)
    return shapes.astype(np.int64), out


def _draw(
    shapes: np.ndarray,
    offsets: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    pos_x: np.ndarray,
    pos_y: np.ndarray,
    kx: np.ndarray,
    ky: np.ndarray,
) -> np.ndarray:
    """Images (B, 64, 64) of sprites: shape classes (B,), `offsets(shape, rows)` their outlines
    (R, E) each, centres at 16 + 32 pos, tiles centred on the corner of pixel 16 + k."""
    images = np.zeros((len(shapes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for shape in range(SIZES[0]):
        (matching,) = np.nonzero(shapes == shape)
        for start in range(0, matching.size, CHUNK_OUTLINES * PATCH * PATCH):
            which = matching[start : start + CHUNK_OUTLINES * PATCH * PATCH]
            dx, dy = offsets(shape, which)
            x = _snap(dx, pos_x[which], kx[which])
            y = _snap(dy, pos_y[which], ky[which])
            tiles = _rasterise(x, y)
            corner = (which * IMAGE_SIZE + ky[which]) * IMAGE_SIZE + kx[which]
            grid = np.arange(PATCH)
            images.reshape(-1)[corner[:, None, None] + grid[:, None] * IMAGE_SIZE + grid] = tiles
    return images


def _chunks() -> Iterator[np.ndarray]:
    """The whole set in official order, CHUNK_OUTLINES * 1024 images (n, 64, 64) uint8 at a time."""
    num_outlines = SIZES[1] * SIZES[2]
    for shape in range(SIZES[0]):
        for start in range(0, num_outlines, CHUNK_OUTLINES):
            yield _render_grid(shape, slice(start, start + CHUNK_OUTLINES))


def _render_grid(shape: int, outlines: slice) -> np.ndarray:
    """Images (n * 1024, 64, 64) of a shape at every position, for the outlines (flat index
    scale * 40 + orientation) in `outlines`, in official order."""
    dx, dy = _offsets(shape)
    edges = dx.shape[-1]
    dx, dy = dx.reshape(-1, edges)[outlines], dy.reshape(-1, edges)[outlines]
    x = _snap(dx[:, None], VALUES["posX"][None], np.arange(SIZES[3]))[:, :, None]
    y = _snap(dy[:, None], VALUES["posY"][None], np.arange(SIZES[4]))[:, None]
    x, y = np.broadcast_arrays(x, y)
    tiles = _rasterise(x.reshape(-1, edges), y.reshape(-1, edges))
    return _paste_grid(tiles.reshape(-1, SIZES[3], SIZES[4], PATCH, PATCH))


def _paste_grid(tiles: np.ndarray) -> np.ndarray:
    """Images (n * 1024, 64, 64) of tiles (n, posX, posY, PATCH, PATCH): tile (kx, ky) is pasted
    with its corner at row ky, column kx."""
    images = np.zeros((*tiles.shape[:3], IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    s_out, s_kx, s_ky, s_row, s_col = images.strides
    view = np.lib.stride_tricks.as_strided(
        images,
        shape=tiles.shape,
        strides=(s_out, s_kx + s_col, s_ky + s_row, s_row, s_col),
        writeable=True,
    )
    view[...] = tiles
    return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def render_all_packed(progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The whole set in official order as bit-packed rows (737280, 512) uint8 (`np.packbits` of
    each flattened image); `progress(done, total)` is called per chunk."""
    packed = np.empty((NUM_IMAGES, IMAGE_SIZE * IMAGE_SIZE // 8), dtype=np.uint8)
    done = 0
    for images in _chunks():
        packed[done : done + len(images)] = np.packbits(images.reshape(len(images), -1), axis=1)
        done += len(images)
        if progress is not None:
            progress(done, NUM_IMAGES)
    return packed


def metadata() -> dict[str, object]:
    """The file's metadata (stored as JSON, never pickled)."""
    return {
        "title": "dSprites dataset",
        "description": "Procedurally generated 2D shapes from 6 disentangled latent factors, "
        "drawn by causal_sprites.data.render to match the official dSprites file "
        "(Matthey et al. 2017): same order, same factor values.",
        "version": 1,
        "generator": "causal_sprites.data.render",
        "latents_names": list(ALL_FACTORS),
        "latents_sizes": list(ALL_SIZES),
        "latents_possible_values": {name: VALUES[name].tolist() for name in ALL_FACTORS},
    }


def remove_dead_writers_parts(path: Path) -> list[Path]:
    """Delete the `.NAME.PID.HEX.part` files that writers of `path` killed mid-way left behind
    (their process is gone); a live writer's file is kept. Returns what was removed."""
    removed = []
    for part in path.parent.glob(f".{path.name}.*.part"):
        pid = part.name[len(path.name) + 2 :].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
            removed.append(part)
        except PermissionError:
            pass  # alive, another user's
    return removed


def write_npz(path: Path, progress: Callable[[int, int], None] | None = None) -> None:
    """Write the whole set to `path` in the official format (keys `imgs`, `latents_values`,
    `latents_classes`, `metadata` as a JSON string), streaming the images through a temporary
    file that replaces `path` only when complete; `progress(done, total)` is called per chunk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_parts(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with zipfile.ZipFile(temp, "x", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            with zf.open("imgs.npy", "w", force_zip64=True) as member:
                header = {
                    "descr": "|u1",
                    "fortran_order": False,
                    "shape": (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE),
                }
                np.lib.format.write_array_header_1_0(member, header)
                done = 0
                for images in _chunks():
                    member.write(images.data)
                    done += len(images)
                    if progress is not None:
                        progress(done, NUM_IMAGES)
            classes = index_to_classes(np.arange(NUM_IMAGES))
            arrays = {
                "latents_values": classes_to_values(classes),
                "latents_classes": classes,
                "metadata": np.array(json.dumps(metadata())),
            }
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
