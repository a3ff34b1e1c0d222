"""The procedural generator: fidelity to real dSprites frames, exact rasterisation, the file."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from causal_sprites.data import render as render_module
from causal_sprites.data.factors import (
    BASES,
    NUM_IMAGES,
    VALUES,
    classes_to_values,
    index_to_classes,
)
from causal_sprites.data.render import (
    FILENAME,
    remove_dead_writers_parts,
    render,
    render_values,
    write_npz,
)
from causal_sprites.errors import CausalSpritesError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dsprites_reference.npz"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    if not REFERENCE.exists():
        pytest.skip(f"real dSprites frames not found at {REFERENCE}")
    with np.load(REFERENCE, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def random_classes(num: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, num) for size in (3, 6, 40, 32, 32)], axis=1)


def brute_force(classes: np.ndarray) -> np.ndarray:
    """Direct rasterisation on the whole image: every pixel against every edge, exact integers."""
    shape, scale, orientation, kx, ky = (int(c) for c in classes)
    dx, dy = render_module._offsets(shape)
    return brute_force_outline(
        16 + 32 * VALUES["posX"][kx] + dx[scale, orientation],
        16 + 32 * VALUES["posY"][ky] + dy[scale, orientation],
    )


def brute_force_values(
    shape: int, scale: float, orientation: float, pos_x: float, pos_y: float
) -> np.ndarray:
    """`brute_force` of a sprite at any values."""
    dx, dy = render_module._turn(shape, scale, np.cos(orientation), np.sin(orientation))
    return brute_force_outline(16 + 32 * pos_x + dx, 16 + 32 * pos_y + dy)


def brute_force_outline(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The image of an outline (E,) in pixels, each pixel centre tested against every edge."""
    x0, y0 = (np.rint(c * 256).astype(np.int64) for c in (x, y))
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    py, px = (np.mgrid[0:64, 0:64].reshape(2, -1, 1) * 256) + 128
    cross = (px - x0) * (y1 - y0) - (py - y0) * (x1 - x0)
    on_edge = (
        (cross == 0)
        & (px >= np.minimum(x0, x1))
        & (px <= np.maximum(x0, x1))
        & (py >= np.minimum(y0, y1))
        & (py <= np.maximum(y0, y1))
    ).any(axis=1)
    # A ray to the left, with the other half-open convention than the renderer's.
    straddles = (y0 >= py) != (y1 >= py)
    left = np.where(y1 > y0, cross > 0, cross < 0)
    inside = (straddles & left).sum(axis=1) % 2 == 1
    return (inside & ~on_edge).reshape(64, 64).astype(np.uint8)


def test_animation_frames_match_exactly(reference: dict[str, np.ndarray]) -> None:
    images = render(reference["animation_classes"])
    diff = (images != reference["animation_imgs"]).reshape(len(images), -1).sum(axis=1)
    assert (diff == 0).sum() == 316
    assert diff.max() <= 2
    wrong = reference["animation_classes"][diff > 0]
    assert (wrong[:, 0] == 2).all()  # only hearts miss, by a pixel pair


def test_labelled_images_match_exactly(reference: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(render(reference["labelled_classes"]), reference["labelled_imgs"])


def test_mean_iou_on_reference(reference: dict[str, np.ndarray]) -> None:
    images = render(reference["animation_classes"]).astype(bool)
    truth = reference["animation_imgs"].astype(bool)
    iou = (images & truth).sum(axis=(1, 2)) / (images | truth).sum(axis=(1, 2))
    assert iou.mean() > 0.9998


def test_agrees_with_brute_force_rasterisation() -> None:
    classes = np.concatenate(
        [
            random_classes(150, seed=1),
            # a square edge through pixel centres, an orientation-39 heart, a heart near a tie
            [[0, 1, 0, 23, 3], [2, 2, 39, 5, 0], [2, 5, 25, 20, 10], [1, 5, 39, 31, 31]],
        ]
    )
    images = render(classes)
    for image, row in zip(images, classes, strict=True):
        np.testing.assert_array_equal(image, brute_force(row), err_msg=str(row))


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_grid_path_matches_render(shape: int) -> None:
    outlines = slice(37, 45)  # scale 0 orientations 37..39, scale 1 orientations 0..4
    images = render_module._render_grid(shape, outlines)
    start = shape * BASES[1] + outlines.start * BASES[3]
    classes = index_to_classes(np.arange(start, start + len(images)))
    np.testing.assert_array_equal(images, render(classes))


def test_output_is_binary_uint8_and_color_column_is_optional() -> None:
    classes = random_classes(64, seed=2)
    images = render(classes)
    assert images.shape == (64, 64, 64) and images.dtype == np.uint8
    assert set(np.unique(images)) == {0, 1}
    assert images.any(axis=(1, 2)).all()
    with_color = np.concatenate([np.zeros((64, 1), dtype=np.int64), classes], axis=1)
    np.testing.assert_array_equal(render(with_color), images)
    assert render(np.zeros((0, 5), dtype=np.int64)).shape == (0, 64, 64)


def test_orientation_39_equals_orientation_0() -> None:
    grid = np.array(np.meshgrid(range(3), range(6), [0, 13, 31], [0, 17, 31])).reshape(4, -1).T
    start = np.insert(grid, 2, 0, axis=1)
    end = np.insert(grid, 2, 39, axis=1)
    np.testing.assert_array_equal(render(start), render(end))


def test_area_grows_with_scale() -> None:
    classes = np.array(
        [
            [shape, scale, orientation, 10, 20]
            for shape in range(3)
            for orientation in (0, 7, 22)
            for scale in range(6)
        ]
    )
    area = render(classes).sum(axis=(1, 2)).reshape(-1, 6)
    assert (np.diff(area, axis=1) > 0).all()


@pytest.mark.parametrize("column", [3, 4])
def test_centroid_moves_with_position(column: int) -> None:
    classes = np.tile([2, 3, 5, 12, 12], (32, 1))
    classes[:, column] = np.arange(32)
    images = render(classes).astype(float)
    axis = 2 if column == 3 else 1  # posX moves along columns, posY down the rows
    coords = np.arange(64) + 0.5
    centroid = (images.sum(axis=3 - axis) * coords).sum(axis=1) / images.sum(axis=(1, 2))
    assert (np.diff(centroid) > 0.9).all()
    assert np.allclose(np.diff(centroid), 32 / 31, atol=0.35)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (np.zeros((2, 4), dtype=np.int64), "shape (B, 5) or (B, 6)"),
        (np.zeros(5, dtype=np.int64), "shape (B, 5) or (B, 6)"),
        (np.zeros((1, 5)), "must be integers"),
        (np.array([[3, 0, 0, 0, 0]]), "shape class 3 is out of range 0..2"),
        (np.array([[0, 0, 40, 0, 0]]), "orientation class 40 is out of range 0..39"),
        (np.array([[0, 0, 0, 0, -1]]), "posY class -1 is out of range 0..31"),
        (np.array([[1, 0, 0, 0, 0, 0]]), "color class 1 is out of range 0..0"),
    ],
)
def test_bad_input_raises_one_line(classes: np.ndarray, message: str) -> None:
    with pytest.raises(CausalSpritesError, match=re.escape(message)) as error:
        render(classes)
    assert "\n" not in str(error.value)


def test_values_on_the_grid_render_bit_for_bit_as_classes() -> None:
    classes = random_classes(600, seed=4)
    shape, scale, orientation, kx, ky = classes.T
    images = render_values(
        shape,
        VALUES["scale"][scale],
        VALUES["orientation"][orientation],
        VALUES["posX"][kx],
        VALUES["posY"][ky],
    )
    np.testing.assert_array_equal(images, render(classes))
    one = render_values(2, 1.0, 0.0, 1.0, 0.0)
    np.testing.assert_array_equal(one, render(np.array([[2, 5, 0, 31, 0]])))


def test_values_off_the_grid_agree_with_brute_force() -> None:
    rng = np.random.default_rng(5)
    num = 60
    shape = rng.integers(0, 3, num)
    scale = rng.uniform(0.3, 1.0, num)
    scale[:12] = 1.0  # the largest sprites, at the positions furthest from their tile's centre
    orientation = rng.uniform(-7.0, 7.0, num)
    pos = rng.uniform(0, 1, (2, num))
    pos[:, :12] = np.array([[0.0, 1.0, 0.5 / 32, 31.5 / 32, 15.5 / 32, 16.5 / 32] * 2] * 2)
    pos[1, :12] = pos[1, :12][::-1]
    images = render_values(shape, scale, orientation, pos[0], pos[1])
    for k, image in enumerate(images):
        values = (int(shape[k]), scale[k], orientation[k], pos[0, k], pos[1, k])
        np.testing.assert_array_equal(image, brute_force_values(*values), err_msg=str(values))


def test_values_move_smoothly_between_the_grids() -> None:
    coords = np.arange(64) + 0.5
    pos = np.linspace(0.0, 1.0, 125)  # four steps between neighbouring grid positions
    images = render_values(2, 0.8, 0.3, pos, 0.4).astype(float)
    centroid = (images.sum(axis=1) * coords).sum(axis=1) / images.sum(axis=(1, 2))
    offset = centroid - 32 * pos  # a constant, but for the pixels' steps
    assert np.abs(offset - offset.mean()).max() < 0.15 and (np.diff(centroid) > 0).all()
    scale = np.linspace(0.5, 1.0, 26)  # five steps between grid scales
    area = render_values(1, scale, 1.0, 0.5, 0.5).sum(axis=(1, 2), dtype=np.int64)
    # The area grows as the scale squared, within a binary image's few pixels (74 at 0.5).
    assert np.abs(area / scale**2 / area[-1] - 1).max() < 0.05 and (np.diff(area) >= 0).all()
    turn = np.linspace(VALUES["orientation"][5], VALUES["orientation"][6], 9)
    frames = render_values(0, 1.0, turn, 0.5, 0.5).astype(bool)
    iou = (frames[1:] & frames[:-1]).sum(axis=(1, 2)) / (frames[1:] | frames[:-1]).sum(axis=(1, 2))
    assert iou.min() > 0.9
    assert (frames[4] != frames[0]).any() and (frames[4] != frames[-1]).any()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((3, 1.0, 0.0, 0.5, 0.5), "shape class 3 is out of range 0..2"),
        ((1.0, 1.0, 0.0, 0.5, 0.5), "shape must be a class index"),
        ((0, 0.0, 0.0, 0.5, 0.5), "scale 0 is not in (0, 1]"),
        ((0, 1.5, 0.0, 0.5, 0.5), "scale 1.5 is not in (0, 1]"),
        ((0, 1.0, np.nan, 0.5, 0.5), "orientation nan is not a finite number of radians"),
        ((0, 1.0, 0.0, -0.1, 0.5), "posX -0.1 is not in [0, 1]"),
        ((0, 1.0, 0.0, 0.5, np.inf), "posY inf is not in [0, 1]"),
        ((np.zeros(2, int), 1.0, 0.0, np.zeros(3), 0.5), "do not broadcast"),
        ((np.zeros((2, 2), int), 1.0, 0.0, 0.5, 0.5), "numbers or (B,) arrays"),
    ],
)
def test_bad_values_raise_one_line(values: tuple, message: str) -> None:
    with pytest.raises(CausalSpritesError, match=re.escape(message)) as error:
        render_values(*values)
    assert "\n" not in str(error.value)


def test_write_npz_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_npz(tmp_path / FILENAME, progress=stop)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_write_npz_official_format(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    calls: list[tuple[int, int]] = []
    write_npz(path, progress=lambda done, total: calls.append((done, total)))
    assert list(tmp_path.iterdir()) == [path]
    assert calls[-1] == (NUM_IMAGES, NUM_IMAGES)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["imgs", "latents_classes", "latents_values", "metadata"]
        classes = data["latents_classes"]
        assert classes.dtype == np.int64
        np.testing.assert_array_equal(classes, index_to_classes(np.arange(NUM_IMAGES)))
        values = data["latents_values"]
        assert values.dtype == np.float64
        np.testing.assert_array_equal(values, classes_to_values(classes))
        assert json.loads(data["metadata"].item())["latents_sizes"] == [1, 3, 6, 40, 32, 32]
    # Stream the images rather than load 3 GB; check a sampled image in each block.
    rng = np.random.default_rng(3)
    block = 1 << 15
    with zipfile.ZipFile(path) as archive, archive.open("imgs.npy") as member:
        assert np.lib.format.read_magic(member) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        assert (shape, fortran, dtype) == ((NUM_IMAGES, 64, 64), False, np.dtype(np.uint8))
        for start in range(0, NUM_IMAGES, block):
            images = np.frombuffer(member.read(block * 4096), dtype=np.uint8).reshape(-1, 64, 64)
            index = int(rng.integers(len(images)))
            np.testing.assert_array_equal(
                images[index], render(index_to_classes(np.array([start + index])))[0]
            )
        assert member.read() == b""


def test_a_killed_generators_part_file_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    target = tmp_path / FILENAME
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".{FILENAME}.{int(dead.stdout)}.abcd1234.part"
    live = tmp_path / f".{FILENAME}.{os.getpid()}.beef0000.part"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    assert remove_dead_writers_parts(target) == [stale]
    assert not stale.exists() and live.exists()
