"""The pendulum (CausalVAE's scene): geometry against CausalVAE's formula and hand values, the
rasteriser against the world-to-pixel map and against CausalVAE's own matplotlib figure, the
grid, the recorded noise and true counterfactuals, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Polygon

from causal_sprites.data import pendulum
from causal_sprites.data.pendulum import (
    projection,
    render,
    rod_point,
    sample,
    scene_factors,
    shadow,
    sun_x,
    to_pixels,
    true_counterfactual,
)
from causal_sprites.errors import CausalSpritesError


def causalvae_projection(theta: float, phi: float, x: float, y: float, base: float = -0.5) -> float:
    """CausalVAE's `projection`, as written there (angles in radians)."""
    b = y - x * math.tan(phi)
    return (base - b) / math.tan(phi)


def causalvae_figure(i: int, j: int) -> np.ndarray:
    """CausalVAE's figure for grid indices (i, j), drawn as its `pendulum.py` draws it (96 px)."""
    theta, phi = i * math.pi / 200, j * math.pi / 200
    x, y = 10 + 8 * math.sin(theta), 10.5 - 8 * math.cos(theta)
    far_x, far_y = 10 + 9.5 * math.sin(theta), 10.5 - 9.5 * math.cos(theta)
    start, end = (
        causalvae_projection(theta, phi, 10, 10.5),
        causalvae_projection(theta, phi, far_x, far_y),
    )
    mid, shade = (start + end) / 2, max(3, abs(start - end))
    fig = Figure(figsize=(1.0, 1.0), dpi=96)
    ax = fig.add_subplot()
    for artist in (
        Polygon([[10, 10.5], [x, y]], color="black", linewidth=3),
        Circle((x, y), 1.5, color="firebrick"),
        Circle((causalvae_projection(theta, phi, 10, 10.5, 20.5), 20.5), 3, color="orange"),
        Polygon([[mid - shade / 2, -0.5], [mid + shade / 2, -0.5]], color="black", linewidth=3),
    ):
        ax.add_artist(artist)
    ax.set_xlim((0, 20))
    ax.set_ylim((-1, 21))
    ax.axis("off")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def no_noise(num: int) -> dict[str, np.ndarray]:
    return {key: np.zeros(num) for key in pendulum.NOISE_KEYS.values()}


def test_projections_are_causalvaes_and_the_hand_values() -> None:
    for i, j in [(-40, 60), (-7, 75), (0, 99), (13, 101), (43, 147)]:
        theta, phi = i * math.pi / 200, j * math.pi / 200
        far = rod_point(i * 0.9, 9.5)
        assert projection(10, 10.5, j * 0.9) == pytest.approx(
            causalvae_projection(theta, phi, 10, 10.5), abs=1e-9
        )
        assert projection(*far, j * 0.9) == pytest.approx(
            causalvae_projection(theta, phi, float(far[0]), float(far[1])), abs=1e-9
        )
        assert sun_x(j * 0.9) == pytest.approx(
            causalvae_projection(theta, phi, 10, 10.5, 20.5), abs=1e-9
        )
    # By hand: light at 45 degrees, pendulum straight down: the pivot (10, 10.5) projects 11
    # units left, to -1; the far point (10, 1) 1.5 left, to 8.5; the sun 10 right, to 20.
    length, position = shadow(0.0, 45.0)
    assert (length, position) == pytest.approx((9.5, 3.75))
    assert sun_x(45.0) == pytest.approx(20.0) and sun_x(135.0) == pytest.approx(0.0)
    assert shadow(0.0, 135.0) == pytest.approx((9.5, 16.25))
    # The ball 8 down the rod at 30 degrees: (10 + 4, 10.5 - 8 cos 30).
    assert rod_point(30.0, 8.0) == pytest.approx((14.0, 10.5 - 4 * math.sqrt(3)))


def test_a_light_overhead_takes_the_formulas_limit() -> None:
    for theta in (-30.0, -5.0, 0.0, 20.0, 38.0):
        overhead = np.array(shadow(theta, 90.0))
        for near in (90.0 - 1e-6, 90.0 + 1e-6):
            assert overhead == pytest.approx(np.array(shadow(theta, near)), abs=1e-5)
        # Straight down, each point's shadow is right below it.
        sin = math.sin(math.radians(theta))
        assert overhead == pytest.approx((max(3.0, 9.5 * abs(sin)), 10 + 4.75 * sin))
    assert sun_x(90.0) == pytest.approx(10.0)


def test_shadow_ranges_hold_the_geometry_tightly() -> None:
    theta, phi = np.meshgrid(
        np.linspace(*pendulum.PENDULUM_RANGE, 301), np.linspace(*pendulum.LIGHT_RANGE, 301)
    )
    length, position = shadow(theta, phi)
    ranges = pendulum.shadow_ranges()
    assert ranges["shadow_length"] == pytest.approx((3.0, 12.5774), abs=1e-4)
    assert ranges["shadow_position"] == pytest.approx((2.0080, 19.6060), abs=1e-4)
    assert length.min() == 3.0 and length.max() == pytest.approx(ranges["shadow_length"][1])
    assert (position.min(), position.max()) == pytest.approx(ranges["shadow_position"])
    noisy = pendulum.shadow_ranges(0.2)
    assert noisy["shadow_length"] == pytest.approx((2.2, 12.5774 + 0.8), abs=1e-4)
    schema = pendulum.pendulum_schema(96, 0.2)
    assert schema.names == pendulum.FACTOR_NAMES and schema.image_shape == (96, 96, 3)
    assert (schema.factors[0].low, schema.factors[0].high) == pytest.approx((-36.0, 38.7))
    assert (schema.factors[1].low, schema.factors[1].high) == pytest.approx((54.0, 132.3))
    assert schema.factors[0].unit == "degrees" and schema.factors[3].unit == "world units"
    assert schema.extra["graph"] == [list(edge) for edge in pendulum.EDGES]


def test_the_causalvae_grid() -> None:
    factors, noise = sample(grid="causalvae")
    assert factors.shape == (7308, 4) == (84 * 87, 4)
    assert factors[0, :2] == pytest.approx((-36.0, 54.0))
    assert factors[-1, :2] == pytest.approx((38.7, 132.3))
    assert factors[87, :2] == pytest.approx((-35.1, 54.0))  # the light varies fastest
    assert np.unique(np.round(factors[:, 0] / 0.9)).tolist() == list(range(-40, 44))
    lights = np.unique(np.round(factors[:, 1] / 0.9)).tolist()
    assert lights == [j for j in range(60, 148) if j != 100] and 90.0 not in factors[:, 1]
    # CausalVAE's deterministic shadow, never shorter than 3 (and often exactly 3).
    assert np.array_equal(factors[:, 2:], np.stack(shadow(factors[:, 0], factors[:, 1]), 1))
    assert factors[:, 2].min() == 3.0 and (factors[:, 2] == 3.0).mean() > 0.1
    assert all(not values.any() for values in noise.values())


def test_the_render_is_causalvaes_figure() -> None:
    for i, j in [(-40, 60), (0, 80), (20, 120), (-30, 140)]:
        ours = render(scene_factors(np.array([i * 0.9]), np.array([j * 0.9]), no_noise(1)), 96)
        difference = np.abs(ours[0].astype(int) - causalvae_figure(i, j).astype(int))
        assert difference.mean() < 1.0  # of 255: measured 0.15 to 0.41
        assert (difference.max(axis=-1) > 64).mean() < 0.002


@pytest.mark.parametrize("size", [64, 96])
def test_the_ball_lands_where_the_map_says(size: int) -> None:
    angles = np.array([-33.3, -8.0, 0.0, 17.1, 38.0])
    factors = scene_factors(angles, np.full(5, 80.0), no_noise(5))
    images = render(factors, size).astype(np.float64)
    red, green, blue = images[..., 0], images[..., 1], images[..., 2]
    # How much of each pixel the ball covers, read off green (white 255, firebrick 34) where the
    # pixel is reddish (not the black rod and shadow) with green = blue (not the orange sun).
    ball = (red - green > 20) & (np.abs(green - blue) <= 2)
    weight = np.where(ball, np.clip((255 - green) / (255 - 34), 0, 1), 0)
    # Measured within 0.13 px and 3 % of the area: pixels where the rod meets the ball read a
    # little too much ball.
    rows, cols = np.mgrid[:size, :size] + 0.5
    centre_u, centre_v = to_pixels(*rod_point(angles, 8.0), size)
    for k in range(len(angles)):
        total = weight[k].sum()
        assert (weight[k] * cols).sum() / total == pytest.approx(centre_u[k], abs=0.2)
        assert (weight[k] * rows).sum() / total == pytest.approx(centre_v[k], abs=0.2)
        area = math.pi * np.prod([1.5 * s + size / 144 for s in pendulum.pixels_per_unit(size)])
        assert total == pytest.approx(area, rel=0.04)


@pytest.mark.parametrize("size", [64, 96])
def test_the_shadow_spans_its_length_at_its_position(size: int) -> None:
    factors = np.array([[10.0, 70.0, 3.0, 6.0], [-20.0, 110.0, 7.25, 12.4], [0.0, 90.0, 11.0, 9.7]])
    images = render(factors, size)
    ground_v = float(to_pixels(0.0, pendulum.GROUND, size)[1])
    row = math.floor(ground_v)
    half = pendulum.LINE_WIDTH * size / 2
    assert ground_v - half <= row and row + 1 <= ground_v + half  # a fully covered row
    per_x = pendulum.pixels_per_unit(size)[0]
    for image, (_, _, length, position) in zip(images, factors, strict=True):
        darkness = (255 - image[row, :, 0].astype(np.float64)) / 255
        assert darkness.sum() == pytest.approx(length * per_x, abs=0.02)
        centre = (darkness * (np.arange(size) + 0.5)).sum() / darkness.sum()
        assert centre == pytest.approx(float(to_pixels(position, 0.0, size)[0]), abs=0.02)


def test_noise_is_recorded_and_zero_noise_is_deterministic() -> None:
    quiet = pendulum.generate(num_samples=40, seed=3)
    factors = quiet.factors(slice(None))
    assert np.array_equal(factors[:, 2:], np.stack(shadow(factors[:, 0], factors[:, 1]), 1))
    assert not quiet.extra["noise_shadow_length"].any()
    assert quiet.images(slice(None)).shape == (40, 64, 64, 3)
    noisy = pendulum.generate(num_samples=400, shadow_noise=0.3, seed=3)
    rows = noisy.factors(slice(None))
    length, position = shadow(rows[:, 0], rows[:, 1])
    assert np.array_equal(rows[:, 2], length + noisy.extra["noise_shadow_length"])
    assert np.array_equal(rows[:, 3], position + noisy.extra["noise_shadow_position"])
    for key in pendulum.NOISE_KEYS.values():
        values = noisy.extra[key]
        assert np.abs(values).max() <= 1.2 and values.std() == pytest.approx(0.3, rel=0.15)
    again = pendulum.generate(num_samples=400, shadow_noise=0.3, seed=3)
    assert np.array_equal(again.images(slice(None)), noisy.images(slice(None)))
    assert noisy.schema.extra["shadow_noise"] == 0.3


def test_true_counterfactuals() -> None:
    data = pendulum.generate(num_samples=6, shadow_noise=0.3, seed=1)
    factors, images = data.factors(slice(None)), data.images(slice(None))
    noise = data.extra
    cf, cf_images = true_counterfactual(factors, noise, {"pendulum_angle": 10.0}, data.schema)
    fresh = scene_factors(np.full(6, 10.0), factors[:, 1], noise)
    assert np.array_equal(cf, fresh) and np.array_equal(cf_images, render(fresh))
    assert np.array_equal(cf[:, 1], factors[:, 1]) and not np.allclose(cf[:, 3], factors[:, 3])
    # do(observed) returns the images exactly.
    same, same_images = true_counterfactual(
        factors, noise, {"pendulum_angle": factors[:, 0], "light_angle": factors[:, 1]}, data.schema
    )
    assert np.array_equal(same, factors) and np.array_equal(same_images, images)
    # do of a shadow factor fixes it and leaves everything else.
    fixed, fixed_images = true_counterfactual(factors, noise, {"shadow_length": 6.0}, data.schema)
    assert np.array_equal(fixed[:, [0, 1, 3]], factors[:, [0, 1, 3]]) and (fixed[:, 2] == 6.0).all()
    ground = math.floor(float(to_pixels(0.0, pendulum.GROUND, 64)[1]))
    changed = np.flatnonzero((fixed_images != images).any(axis=(0, 2, 3)))
    assert changed.min() >= ground - 2 and changed.max() <= ground + 2


def test_bad_input_is_refused_in_one_line() -> None:
    cases = [
        (lambda: pendulum.generate(num_samples=2, size=32), "64 or 96 pixels a side, not 32"),
        (lambda: pendulum.generate(num_samples=2, shadow_noise=-0.1), "shadow noise -0.1"),
        (lambda: pendulum.generate(num_samples=2, shadow_noise=float("nan")), "shadow noise"),
        (lambda: pendulum.generate(num_samples=2, shadow_noise=1.0), "outside 0..0.75"),
        (lambda: pendulum.generate(num_samples=0), "at least 1, got 0"),
        (lambda: sample(5, grid="causalvae"), "drop --num-samples"),
        (lambda: sample(grid="mnist"), "unknown grid 'mnist'"),
        (lambda: render(np.zeros((2, 3))), "(N, 4)"),
    ]
    factors = scene_factors(np.array([0.0]), np.array([60.0]), no_noise(1))
    for do, message in [
        ({"hue": 1.0}, "unknown factor 'hue'"),
        ({"pendulum_angle": 50.0}, "do(pendulum_angle=50) is outside its range -36..38.7"),
        ({"light_angle": float("nan")}, "do(light_angle=nan) is outside"),
        ({"light_angle": [60.0, 70.0]}, "one value or one per image (1)"),
    ]:
        cases.append((lambda do=do: true_counterfactual(factors, no_noise(1), do), message))
    cases.append(
        (lambda: true_counterfactual(factors, {}, {}), "noise 'noise_shadow_length' must be")
    )
    for call, message in cases:
        with pytest.raises(CausalSpritesError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)


def test_the_shipped_truth_graph_scores_discovery_on_pendulum_labels(tmp_path: Path) -> None:
    from causal_sprites.data.variant_spec import load_graph
    from causal_sprites.discovery import discover

    spec = Path(__file__).resolve().parents[1] / "examples" / "variants" / "pendulum.yaml"
    edges = load_graph(spec)
    assert set(edges) == set(pendulum.EDGES)
    data = pendulum.generate(2000, shadow_noise=0.2, seed=3)
    kinds = ["continuous"] * 4
    found = discover(data.factors(slice(None)), edges, names=pendulum.FACTOR_NAMES, kinds=kinds)
    assert found["shd"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: pendulum\nedges:\n  - [pendulum_angle, shadow_width]\n")
    with pytest.raises(CausalSpritesError, match="shadow_width"):
        load_graph(bad)


def test_data_show_finds_continuous_values_within_a_tolerance_or_a_range(tmp_path: Path) -> None:
    from tests.cli_run import run

    data = tmp_path / "pendulum.npz"
    run("data", "generate", "--dataset", "pendulum", "--num-samples", 60, "--out", data)
    out = tmp_path / "show.png"
    run("data", "show", "--data", data, "--given", "pendulum_angle=-36..0", "--out", out)
    assert out.read_bytes().startswith(b"\x89PNG")
    _, error = run(
        "data", "show", "--data", data, "--given", "pendulum_angle=38.69..38.7", "--out", out,
        code=1,
    )  # fmt: skip
    assert "no images match" in error
