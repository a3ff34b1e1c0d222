"""The pendulum of CausalVAE (Yang et al., CVPR 2021, its `causal_data/pendulum.py`): the angles of
a pendulum and of a light cast a shadow whose length and position follow by projection. Rendered
by our own anti-aliased rasteriser; each image's shadow noise is recorded, so the true
counterfactual of any image under any do() is rendered exactly.

The scene, in world units (x to the right, y up, the box x in [0, 20], y in [-1, 21]): the rod
hangs from the pivot (10, 10.5); the ball's centre is 8 units down the rod at the pendulum's angle
theta (0 straight down, positive to the right), radius 1.5; the sun, radius 3, sits on y = 20.5
where the light's ray through the pivot meets it; the shadow lies on the ground y = -0.5 between
the projections, along the light's direction phi (degrees from the +x axis), of the pivot and of
the ball's far point (9.5 units down the rod), and is at least 3 long. Drawn as CausalVAE drew it:
the rod, then the firebrick ball, the orange sun and the shadow, black lines 3 points wide, on
white.

The picture: CausalVAE drew with matplotlib on a 1x1 inch figure at 96 dpi with the default axes
box (figure fractions left 0.125, right 0.9, bottom 0.11, top 0.88) holding the world box, so a
world point (x, y) lands at the pixel coordinates (from the image's top-left corner, in pixels of
an S-pixel image) u = S (0.125 + 0.775 x / 20), v = S (1 - 0.11 - 0.77 (y + 1) / 22); everything
is clipped to that box snapped to whole pixels, as Agg clips. Lines are 3 points (S / 24 pixels)
wide with butt ends; circles carry matplotlib's 1-point edge in their own colour (half a point
added to the radius, in pixels). Not reproduced: matplotlib's snapping of the horizontal shadow to
the pixel grid and its miter join at a two-point polygon's ends (up to a line width longer).

The mechanisms: the angles are roots, uniform over CausalVAE's ranges; shadow_length =
max(3, geometric length) + noise and shadow_position = geometric midpoint + noise, the noise a
normal of SD `shadow_noise` truncated at 4 SD (recorded in world units). A do() value outside its
factor's range is refused, never clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import numpy as np
from scipy import stats

from causal_sprites.data.dataset import Dataset, check_factors, write_dataset
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.progress import progress_bar

# --- the scene (world units) ---------------------------------------------------------------------
PIVOT: Final = (10.0, 10.5)
ROD_LENGTH: Final = 8.0
FAR_POINT: Final = 9.5
BALL_RADIUS: Final = 1.5
SUN_RADIUS: Final = 3.0
SUN_HEIGHT: Final = 20.5
GROUND: Final = -0.5
MIN_SHADOW: Final = 3.0
WORLD_X: Final = (0.0, 20.0)
WORLD_Y: Final = (-1.0, 21.0)
#: Colours (RGB) as matplotlib names them: firebrick, orange, black (on white).
BALL_COLOUR: Final = (178, 34, 34)
SUN_COLOUR: Final = (255, 165, 0)
BLACK: Final = (0, 0, 0)

# --- the picture (fractions of the image's side) -------------------------------------------------
#: Matplotlib's default axes box (rcParams figure.subplot.left, right, bottom, top).
AXES_BOX: Final = (0.125, 0.9, 0.11, 0.88)
#: A 3-point line and a 1-point patch edge on a 1-inch figure.
LINE_WIDTH: Final = 3 / 72
EDGE_WIDTH: Final = 1 / 72
SIDES: Final = (64, 96)

# --- the factors ---------------------------------------------------------------------------------
FACTOR_NAMES: Final = ("pendulum_angle", "light_angle", "shadow_length", "shadow_position")
#: The ground-truth graph, (parent, child) pairs (as examples/variants/pendulum.yaml).
EDGES: Final = (
    ("pendulum_angle", "shadow_length"),
    ("pendulum_angle", "shadow_position"),
    ("light_angle", "shadow_length"),
    ("light_angle", "shadow_position"),
)
#: The recorded exogenous noise of each shadow factor (world units); roots are their own noise.
NOISE_KEYS: Final = {name: f"noise_{name}" for name in ("shadow_length", "shadow_position")}
#: CausalVAE's grid: angle = index * 0.9 degrees (its i * pi / 200 radians).
GRID_STEP: Final = 0.9
PENDULUM_GRID: Final = tuple(range(-40, 44))
LIGHT_GRID: Final = tuple(j for j in range(60, 148) if j != 100)
PENDULUM_RANGE: Final = (PENDULUM_GRID[0] * GRID_STEP, PENDULUM_GRID[-1] * GRID_STEP)
LIGHT_RANGE: Final = (LIGHT_GRID[0] * GRID_STEP, LIGHT_GRID[-1] * GRID_STEP)
GRIDS: Final = ("causalvae",)
#: Shadow noise is a normal truncated at this many SDs, so every value stays in its range.
NOISE_BOUND: Final = 4.0
#: The most shadow noise (SD, world units): the shortest shadow, 3 - 4 SD, stays >= 0.
MAX_SHADOW_NOISE: Final = MIN_SHADOW / NOISE_BOUND
DEFAULT_NUM_SAMPLES: Final = 20_000
#: Images rendered at a time (about 25 MB of float32 at 64x64).
CHUNK: Final = 512


# --- geometry ------------------------------------------------------------------------------------


def projection(
    x: np.ndarray | float,
    y: np.ndarray | float,
    light_angle: np.ndarray | float,
    base: float = GROUND,
) -> np.ndarray:
    """Where the light's ray through (x, y) meets the line y = base: CausalVAE's
    `x + (base - y) / tan(phi)`, written with the cotangent so that a light straight overhead
    (90 degrees, where CausalVAE divides by tan 90) takes the formula's limit, x."""
    phi = np.deg2rad(light_angle)
    return np.asarray(x + (base - np.asarray(y)) * np.cos(phi) / np.sin(phi), dtype=np.float64)


def rod_point(pendulum_angle: np.ndarray | float, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """The point `distance` units down the rod at the pendulum's angle (degrees)."""
    theta = np.deg2rad(np.asarray(pendulum_angle, dtype=np.float64))
    return PIVOT[0] + distance * np.sin(theta), PIVOT[1] - distance * np.cos(theta)


def sun_x(light_angle: np.ndarray | float) -> np.ndarray:
    """The sun's centre on y = 20.5: where the light's ray through the pivot meets that line."""
    return projection(PIVOT[0], PIVOT[1], light_angle, base=SUN_HEIGHT)


def shadow(
    pendulum_angle: np.ndarray | float, light_angle: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """The noiseless shadow (length, midpoint) of CausalVAE's scene: between the ground
    projections of the pivot and of the ball's far point, at least 3 long."""
    start = projection(PIVOT[0], PIVOT[1], light_angle)
    end = projection(*rod_point(pendulum_angle, FAR_POINT), light_angle)
    return np.maximum(MIN_SHADOW, np.abs(end - start)), (start + end) / 2


def shadow_ranges(shadow_noise: float = 0.0) -> dict[str, tuple[float, float]]:
    """The shadow factors' ranges: the geometry's, widened by the noise's bound (4 SD).

    The length before the floor, 9.5 |cos(phi - theta)| / sin(phi), reaches 0 inside the angles' box
    (phi - theta = 90 degrees), so the floor 3 is the least length; phi - theta stays in
    (0, 180) degrees, where |cos| is largest at an end of theta's range, and the greatest length
    is at a corner (theta -36, phi 132.3: 12.577). The midpoint 10 + 4.75 sin(theta) -
    (11 - 4.75 cos(theta)) cot(phi) grows with both angles: 2.008 to 19.606 at the corners.
    """
    theta = np.array([PENDULUM_RANGE[0], PENDULUM_RANGE[0], PENDULUM_RANGE[1], PENDULUM_RANGE[1]])
    phi = np.array([LIGHT_RANGE[0], LIGHT_RANGE[1], LIGHT_RANGE[0], LIGHT_RANGE[1]])
    length, position = shadow(theta, phi)
    spread = NOISE_BOUND * shadow_noise
    return {
        "shadow_length": (MIN_SHADOW - spread, float(length.max()) + spread),
        "shadow_position": (float(position.min()) - spread, float(position.max()) + spread),
    }


def check_options(size: int, shadow_noise: float) -> None:
    """The image side must be 64 or 96, the shadow noise within [0, 0.75] world units."""
    if size not in SIDES:
        raise CausalSpritesError(f"pendulum images are 64 or 96 pixels a side, not {size}")
    if not (math.isfinite(shadow_noise) and 0.0 <= shadow_noise <= MAX_SHADOW_NOISE):
        raise CausalSpritesError(
            f"shadow noise {shadow_noise:g} is outside 0..{MAX_SHADOW_NOISE:g} world units "
            "(an SD: at most a quarter of the shortest shadow, 3)"
        )


def pendulum_schema(size: int = 64, shadow_noise: float = 0.0) -> Schema:
    """The pendulum's schema: four continuous factors, RGB images `size` pixels a side; its
    extra keys hold the true graph and the shadow noise."""
    check_options(size, shadow_noise)
    ranges = {
        "pendulum_angle": (PENDULUM_RANGE, "degrees"),
        "light_angle": (LIGHT_RANGE, "degrees"),
        **{name: (span, "world units") for name, span in shadow_ranges(shadow_noise).items()},
    }
    factors = tuple(
        Factor(name, "continuous", low=span[0], high=span[1], unit=unit)
        for name, (span, unit) in ranges.items()
    )
    extra = {"graph": [list(edge) for edge in EDGES], "shadow_noise": float(shadow_noise)}
    return Schema("pendulum", factors, (size, size, 3), extra=extra)


#: The default pendulum schema: 64x64 images, CausalVAE's deterministic shadow.
SCHEMA: Final = pendulum_schema()


def scene_factors(
    pendulum_angle: np.ndarray,
    light_angle: np.ndarray,
    noise: Mapping[str, np.ndarray],
) -> np.ndarray:
    """The factors (B, 4) from the roots and the shadow noise (world units): each shadow
    factor is its noiseless value plus its noise."""
    length, position = shadow(pendulum_angle, light_angle)
    return np.stack(
        [
            np.asarray(pendulum_angle, dtype=np.float64),
            np.asarray(light_angle, dtype=np.float64),
            length + _noise(noise, "shadow_length", len(length)),
            position + _noise(noise, "shadow_position", len(position)),
        ],
        axis=1,
    )


def _noise(noise: Mapping[str, np.ndarray], factor: str, num: int) -> np.ndarray:
    """A shadow factor's recorded noise (num,), checked."""
    key = NOISE_KEYS[factor]
    values = np.asarray(noise.get(key, np.zeros(0)), dtype=np.float64)
    if values.shape != (num,):
        raise CausalSpritesError(
            f"noise {key!r} must be one value per image ({num}), got "
            f"{'none' if key not in noise else values.shape}"
        )
    return values


def sample(
    num_samples: int | None = None,
    shadow_noise: float = 0.0,
    seed: int = 0,
    grid: str | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Factors (N, 4) and the recorded noise {key: (N,)}: angles uniform over CausalVAE's
    ranges (or its grid, pendulum angle outer, light inner), shadow noise a normal of SD
    `shadow_noise` truncated at 4 SD."""
    rng = np.random.default_rng(seed)
    if grid is not None:
        if grid not in GRIDS:
            raise CausalSpritesError(f"unknown grid {grid!r}; grids are {', '.join(GRIDS)}")
        if num_samples is not None:
            raise CausalSpritesError("a grid has its own number of images: drop --num-samples")
        pendulum, light = np.meshgrid(PENDULUM_GRID, LIGHT_GRID, indexing="ij")
        theta, phi = pendulum.ravel() * GRID_STEP, light.ravel() * GRID_STEP
    else:
        num_samples = DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
        if num_samples < 1:
            raise CausalSpritesError(f"number of samples must be at least 1, got {num_samples}")
        theta = rng.uniform(*PENDULUM_RANGE, size=num_samples)
        phi = rng.uniform(*LIGHT_RANGE, size=num_samples)
    unit = stats.truncnorm.rvs(-NOISE_BOUND, NOISE_BOUND, size=(2, len(theta)), random_state=rng)
    noise = {key: shadow_noise * unit[k] for k, key in enumerate(NOISE_KEYS.values())}
    return scene_factors(theta, phi, noise), noise


# --- the rasteriser ------------------------------------------------------------------------------


def to_pixels(
    x: np.ndarray | float, y: np.ndarray | float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """World (x, y) to continuous pixel coordinates (u from the left, v from the top edge; a
    pixel's centre is at k + 0.5): the axes box of CausalVAE's figure."""
    per_x, per_y = pixels_per_unit(size)
    u = size * AXES_BOX[0] + per_x * (np.asarray(x, dtype=np.float64) - WORLD_X[0])
    v = size * (1 - AXES_BOX[2]) - per_y * (np.asarray(y, dtype=np.float64) - WORLD_Y[0])
    u, v = np.broadcast_arrays(u, v)
    return u, v


def clip_mask(size: int) -> np.ndarray:
    """The axes box as an (S, S) mask of whole pixels, rounded as Agg rounds a clip rectangle."""
    left, right, bottom, top = (math.floor(size * fraction + 0.5) for fraction in AXES_BOX)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[size - top : size - bottom, left:right] = 1
    return mask


def _coverage(distance: np.ndarray) -> np.ndarray:
    """A pixel's covered fraction from the signed distance (pixels) of its centre to a shape's
    edge: exact for a straight edge along a pixel axis, close for any other smooth edge."""
    return np.clip(0.5 - distance, 0.0, 1.0)


def _ellipse(centre: tuple[np.ndarray, np.ndarray], radius: float, size: int) -> np.ndarray:
    """Coverage (B, S, S) of world circles of `radius` centred at pixel points (B,), ellipses
    in pixels with the 1-point edge added: the signed distance to first order, f / |grad f|
    for f = (du/ru)^2 + (dv/rv)^2 - 1."""
    edge = EDGE_WIDTH * size / 2
    ru, rv = (radius * scale + edge for scale in pixels_per_unit(size))
    centres = np.arange(size, dtype=np.float32) + 0.5
    du = (centres[None, None, :] - centre[0][:, None, None].astype(np.float32)) / ru
    dv = (centres[None, :, None] - centre[1][:, None, None].astype(np.float32)) / rv
    gradient = 2 * np.sqrt((du / ru) ** 2 + (dv / rv) ** 2) + np.float32(1e-9)
    return _coverage((du**2 + dv**2 - 1) / gradient)


def _rod(end: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    """Coverage (B, S, S) of lines 3 points wide with butt ends from the pivot to each end
    (B,) (pixels): the signed distance to the rectangle they sweep."""
    start = to_pixels(*PIVOT, size)
    du, dv = end[0] - start[0], end[1] - start[1]
    length = np.hypot(du, dv)
    ux, uy = (np.asarray(d / length, np.float32)[:, None, None] for d in (du, dv))
    centres = np.arange(size, dtype=np.float64) + 0.5
    pu = (centres[None, None, :] - ((start[0] + end[0]) / 2)[:, None, None]).astype(np.float32)
    pv = (centres[None, :, None] - ((start[1] + end[1]) / 2)[:, None, None]).astype(np.float32)
    along = np.abs(pu * ux + pv * uy) - (length / 2)[:, None, None].astype(np.float32)
    across = np.abs(pv * ux - pu * uy) - np.float32(LINE_WIDTH * size / 2)
    outside = np.hypot(np.maximum(along, 0), np.maximum(across, 0))
    return _coverage(outside + np.minimum(np.maximum(along, across), 0))


def _overlap(low: np.ndarray, high: np.ndarray, size: int) -> np.ndarray:
    """The length (B, S) of [low, high] (B,) inside each pixel [k, k + 1]: exact coverage of
    an interval along one axis."""
    edges = np.arange(size, dtype=np.float64)
    return np.clip(
        np.minimum(high[:, None], edges + 1) - np.maximum(low[:, None], edges), 0.0, 1.0
    ).astype(np.float32)


def _shadow(length: np.ndarray, position: np.ndarray, size: int) -> np.ndarray:
    """Coverage (B, S, S) of the shadows, rectangles 3 points high on the ground: exact, the
    product of the overlaps along each axis."""
    left = to_pixels(position - length / 2, GROUND, size)[0]
    right = to_pixels(position + length / 2, GROUND, size)[0]
    ground = to_pixels(0.0, GROUND, size)[1]
    half = np.atleast_1d(LINE_WIDTH * size / 2)
    rows = _overlap(ground - half, ground + half, size)[0]
    return rows[None, :, None] * _overlap(left, right, size)[:, None, :]


def pixels_per_unit(size: int) -> tuple[float, float]:
    """Pixels per world unit along x and along y (the map stretches the world box)."""
    left, right, bottom, top = AXES_BOX
    return size * (right - left) / np.ptp(WORLD_X), size * (top - bottom) / np.ptp(WORLD_Y)


def _render_chunk(factors: np.ndarray, size: int) -> np.ndarray:
    """Images (B, S, S, 3) uint8 of factor rows (B, 4), painted as CausalVAE painted them: rod,
    ball, sun, shadow, each clipped to the axes box."""
    theta, phi, length, position = factors.T
    ball = to_pixels(*rod_point(theta, ROD_LENGTH), size)
    shapes = (
        (_rod(ball, size), BLACK),
        (_ellipse(ball, BALL_RADIUS, size), BALL_COLOUR),
        (_ellipse(to_pixels(sun_x(phi), SUN_HEIGHT, size), SUN_RADIUS, size), SUN_COLOUR),
        (_shadow(length, position, size), BLACK),
    )
    box = clip_mask(size)
    image = np.full((len(factors), size, size, 3), 255, dtype=np.float32)
    for coverage, colour in shapes:
        image += (np.asarray(colour, dtype=np.float32) - image) * (coverage * box)[..., None]
    return np.rint(image).astype(np.uint8)


def render_chunks(
    factors: np.ndarray, size: int = 64, update: Callable[[int, int | None], None] | None = None
) -> Iterator[np.ndarray]:
    """Images of factor rows (N, 4), CHUNK at a time (B, S, S, 3) uint8; `update(done, total)`
    after each."""
    factors = np.asarray(factors, dtype=np.float64)
    for start in range(0, len(factors), CHUNK):
        yield _render_chunk(factors[start : start + CHUNK], size)
        if update is not None:
            update(min(start + CHUNK, len(factors)), len(factors))


def render(factors: np.ndarray, size: int = 64) -> np.ndarray:
    """Images (N, S, S, 3) uint8 of factor rows (N, 4) (pendulum_angle, light_angle,
    shadow_length, shadow_position)."""
    check_options(size, 0.0)
    factors = np.asarray(factors, dtype=np.float64)
    if factors.ndim != 2 or factors.shape[1] != len(FACTOR_NAMES):
        raise CausalSpritesError(
            f"pendulum factors are (N, 4) ({', '.join(FACTOR_NAMES)}), got {factors.shape}"
        )
    if not len(factors):
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(list(render_chunks(factors, size)))


# --- data sets and counterfactuals ---------------------------------------------------------------


def generate(
    num_samples: int | None = None,
    size: int = 64,
    shadow_noise: float = 0.0,
    seed: int = 0,
    grid: str | None = None,
) -> Dataset:
    """A pendulum data set in memory: images, factors, schema, and the shadow noise as extra
    arrays (`noise_shadow_length`, `noise_shadow_position`)."""
    schema = pendulum_schema(size, shadow_noise)
    factors, noise = sample(num_samples, shadow_noise, seed, grid)
    return Dataset(schema, render(factors, size), factors, extra=noise)


def write(
    out: Path | str,
    num_samples: int | None = None,
    size: int = 64,
    shadow_noise: float = 0.0,
    seed: int = 0,
    grid: str | None = None,
    progress: bool = True,
) -> tuple[Path, int]:
    """Render a pendulum data set straight into a dataset file (atomic, streamed chunk by
    chunk, a bar on a terminal); returns the path and the number of images."""
    schema = pendulum_schema(size, shadow_noise)
    factors, noise = sample(num_samples, shadow_noise, seed, grid)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with progress_bar("rendering the pendulum", progress) as update:
        path = write_dataset(
            out, render_chunks(factors, size, update), factors, schema, extra=noise
        )
    return path, len(factors)


def true_counterfactual(
    factors: np.ndarray,
    noise: Mapping[str, np.ndarray],
    do: Mapping[str, float | np.ndarray],
    schema: Schema = SCHEMA,
) -> tuple[np.ndarray, np.ndarray]:
    """The true counterfactual factors (B, 4) and images (B, S, S, 3) of images with factors
    (B, 4) and recorded noise ({noise key: (B,)}, a data set's extra arrays) under `do` (a
    value, or one per image, for each factor intervened on): do of an angle recomputes the
    shadow from the same noise, do of a shadow factor fixes it, the rest is kept.

    Pass the data set's schema (`data.schema`) for its image size and ranges; a do() value
    outside its factor's range (or NaN) is refused, as the command line refuses it."""
    factors = np.asarray(factors, dtype=np.float64)
    check_factors("", factors, schema)
    num = len(factors)
    values: dict[str, np.ndarray] = {}
    for name, value in do.items():
        factor = schema.factor(name)
        assert factor.low is not None and factor.high is not None
        array = np.asarray(value, dtype=np.float64)
        if array.ndim > 1 or array.size not in (1, num):
            raise CausalSpritesError(f"do({name}) needs one value or one per image ({num})")
        array = np.broadcast_to(array.reshape(-1), (num,))
        bad = ~((array >= factor.low) & (array <= factor.high))
        if bad.any():
            raise CausalSpritesError(
                f"do({name}={array[bad][0]:g}) is outside its range "
                f"{factor.low:g}..{factor.high:g} {factor.unit}"
            )
        values[name] = array
    theta = values.get("pendulum_angle", factors[:, 0])
    phi = values.get("light_angle", factors[:, 1])
    out = scene_factors(theta, phi, noise)
    for column, name in enumerate(FACTOR_NAMES[2:], start=2):
        if name in values:
            out[:, column] = values[name]
    check_factors("counterfactual: ", out, schema)
    return out, render(out, schema.image_shape[0])
