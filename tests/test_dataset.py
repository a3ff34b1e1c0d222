"""The dataset file: round trips (pixels, factors, schema, row order), the memory-mapped images
file, atomic writes, and the one-line errors of a file that does not hold what it says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_run import run

from causal_sprites.data.dataset import Dataset, load_dataset, write_dataset
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.errors import CausalSpritesError

SCHEMA = Schema(
    name="squares",
    factors=(
        categorical("colour", ["red", "green", "blue"]),
        categorical("size", [4, 8], values=[4.0, 8.0]),
        Factor("left", "continuous", low=0.0, high=40.0, unit="px"),
    ),
    image_shape=(32, 48, 3),
)
GREY = Schema("grey", (categorical("size", [4, 8]),), (30, 40, 1))
BINARY = Schema("binary", (categorical("size", [4, 8]),), (28, 28, 1), binary=True)


def arrays(num: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Random RGB images (N, 32, 48, 3) and valid factors (N, 3) for SCHEMA."""
    rng = np.random.default_rng(num)
    images = rng.integers(0, 256, (num, 32, 48, 3), dtype=np.uint8)
    factors = np.stack(
        [rng.integers(0, 3, num), rng.integers(0, 2, num), rng.uniform(0, 40, num)], axis=1
    )
    return images, factors


def test_round_trip_keeps_pixels_factors_schema_and_row_order(tmp_path: Path) -> None:
    images, factors = arrays()
    path = write_dataset(tmp_path / "d.npz", images, factors, SCHEMA)
    data = load_dataset(path)
    assert data.schema == SCHEMA and len(data) == 12 and not data.memory_mapped
    np.testing.assert_array_equal(data.images(slice(None)), images)
    np.testing.assert_array_equal(data.factors(slice(None)), factors)
    np.testing.assert_array_equal(data.images([5, 0, 5]), images[[5, 0, 5]])
    assert data.images(3).shape == (32, 48, 3) and data.factors([2]).dtype == np.float64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]
    with np.load(path, allow_pickle=False) as plain:  # readable with plain numpy
        assert sorted(plain.files) == ["factors", "images", "schema"]
        assert json.loads(str(plain["schema"])) == SCHEMA.to_json()
        assert plain["images"].dtype == np.uint8 and plain["factors"].dtype == np.float64


def test_grey_images_are_stored_without_a_channel_axis(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 30, 40, 1), dtype=np.uint8)
    path = write_dataset(tmp_path / "g.npz", images, np.array([[0], [1], [1], [0]]), GREY)
    data = load_dataset(path)
    assert data.images(slice(None)).shape == (4, 30, 40)
    np.testing.assert_array_equal(data.images(slice(None)), images[..., 0])


def test_large_images_go_to_a_memory_mapped_file_beside_it(tmp_path: Path) -> None:
    images, factors = arrays(40)
    chunks = (images[start : start + 7] for start in range(0, 40, 7))
    path = write_dataset(tmp_path / "big.npz", chunks, factors, SCHEMA, images_file_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.images.npy", "big.npz"]
    data = load_dataset(path)
    assert data.memory_mapped and isinstance(data._images, np.memmap)
    rows = [3, 4, 5, 0, 39, 39, 17, 16]  # runs, a repeat, out of order
    np.testing.assert_array_equal(data.images(rows), images[rows])
    np.testing.assert_array_equal(data.images(slice(None)), images)
    np.testing.assert_array_equal(data.images(7), images[7])
    np.testing.assert_array_equal(data.images(np.array([[1, 2], [9, 8]])), images[[[1, 2], [9, 8]]])
    assert data.images([]).shape == (0, 32, 48, 3)
    np.testing.assert_array_equal(np.load(tmp_path / "big.images.npy"), images)
    with np.load(path, allow_pickle=False) as plain:
        assert str(plain["images_file"]) == "big.images.npy" and "images" not in plain.files


def test_extra_arrays_and_the_summary(tmp_path: Path) -> None:
    images, factors = arrays()
    noise = np.arange(36.0).reshape(12, 3)
    path = write_dataset(tmp_path / "d.npz", images, factors, SCHEMA, extra={"noise_x": noise})
    data = load_dataset(path)
    np.testing.assert_array_equal(data.extra["noise_x"], noise)
    summary = data.summary()
    assert summary["num_images"] == 12 and summary["image_shape"] == [32, 48, 3]
    assert summary["counts"] == {
        "colour": np.bincount(factors[:, 0].astype(int), minlength=3).tolist(),
        "size": np.bincount(factors[:, 1].astype(int), minlength=2).tolist(),
    }
    assert summary["ranges"] == {"left": [factors[:, 2].min(), factors[:, 2].max()]}


@pytest.mark.parametrize("threshold", [10**9, 1000])
@pytest.mark.parametrize("interrupt", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_nothing_and_keeps_the_old_file(
    tmp_path: Path, threshold: int, interrupt: BaseException
) -> None:
    images, factors = arrays()
    old = write_dataset(tmp_path / "d.npz", images[:, ::-1], factors, SCHEMA)
    before = old.read_bytes()

    def chunks() -> Iterator[np.ndarray]:
        yield images[:6]
        raise interrupt

    with pytest.raises(type(interrupt)):
        write_dataset(old, chunks(), factors, SCHEMA, images_file_bytes=threshold)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]
    assert old.read_bytes() == before


@pytest.mark.parametrize(
    ("images", "factors", "schema", "message"),
    [
        (np.zeros((3, 32, 48, 3), np.uint8), np.zeros((4, 3)), SCHEMA, "3 images but 4 rows"),
        (np.zeros((5, 32, 48, 3), np.uint8), np.zeros((4, 3)), SCHEMA, "more images than the 4"),
        (
            np.zeros((4, 48, 32, 3), np.uint8),
            np.zeros((4, 3)),
            SCHEMA,
            r"expected \(N, 32, 48, 3\)",
        ),
        (np.zeros((4, 32, 48, 3)), np.zeros((4, 3)), SCHEMA, "images are float64, expected uint8"),
        (np.zeros((2, 32, 48, 3), np.uint8), [[3, 0, 0], [0, 0, 0]], SCHEMA, "colour is 3, not a"),
        (np.zeros((1, 32, 48, 3), np.uint8), [[0, 0.5, 0]], SCHEMA, "size is 0.5, not a class"),
        (np.zeros((1, 32, 48, 3), np.uint8), [[0, 0, 41]], SCHEMA, "left is 41, not within its"),
        (np.zeros((1, 32, 48, 3), np.uint8), [[0, 0]], SCHEMA, r"expected \(N, 3\) for factors"),
        (np.zeros((0, 32, 48, 3), np.uint8), np.zeros((0, 3)), SCHEMA, "has no images"),
        (np.full((2, 28, 28), 2, np.uint8), [[0], [1]], BINARY, "image 0 has pixels other than"),
    ],
)
def test_write_refuses_what_the_schema_does_not_allow(
    tmp_path: Path, images: np.ndarray, factors: object, schema: Schema, message: str
) -> None:
    with pytest.raises(CausalSpritesError, match=message):
        write_dataset(tmp_path / "d.npz", images, np.asarray(factors), schema)
    assert list(tmp_path.iterdir()) == []


def _npz(path: Path, **changes: np.ndarray | None) -> Path:
    """A dataset .npz written by hand with plain numpy; None drops a key."""
    images, factors = arrays(4)
    members = {"images": images, "factors": factors, "schema": np.array(SCHEMA.dumps())}
    members.update(changes)
    np.savez(path, **{k: v for k, v in members.items() if v is not None})
    return path


def _pickled() -> np.ndarray:
    evil = np.empty(1, dtype=object)
    evil[0] = {"payload": 1}
    return evil


BAD_FILES = {
    "no schema": ({"schema": None}, "is not a dataset file \\(no schema\\)"),
    "no factors": ({"factors": None}, "missing key factors"),
    "no images": ({"images": None}, "missing key images"),
    "integer factors": ({"factors": np.zeros((4, 3), np.int64)}, "factors are int64, expected"),
    "class out of range": ({"factors": np.full((4, 3), 2.0)}, "factors row 0: size is 2, not"),
    "wrong image shape": ({"images": np.zeros((4, 32, 32, 3), np.uint8)}, "images are"),
    "too few images": ({"images": np.zeros((3, 32, 48, 3), np.uint8)}, "3 images but 4 rows"),
    "schema not JSON": ({"schema": np.array("{oops")}, "schema is not valid JSON"),
    "schema not text": ({"schema": np.zeros(3)}, "schema must be one string"),
    "pickled images": ({"images": _pickled()}, "Object arrays cannot be loaded"),
    "images file as a path": ({"images": None, "images_file": np.array("../x.npy")}, "beside"),
    "images file missing": ({"images": None, "images_file": np.array("d.images.npy")}, "missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_refuses_a_bad_file_in_one_line(tmp_path: Path, case: str) -> None:
    changes, message = BAD_FILES[case]
    path = _npz(tmp_path / "d.npz", **changes)
    with pytest.raises(CausalSpritesError, match=message) as error:
        load_dataset(path)
    assert "\n" not in str(error.value)
    _, err = run("data", "info", path, code=1)
    assert str(path) in err


def test_load_refuses_what_is_no_npz(tmp_path: Path) -> None:
    with pytest.raises(CausalSpritesError, match="no such file"):
        load_dataset(tmp_path / "none.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CausalSpritesError, match="is not a dataset file"):
        load_dataset(tmp_path / "text.npz")
    good = write_dataset(tmp_path / "good.npz", *arrays(), SCHEMA)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:3000])
    with pytest.raises(CausalSpritesError, match="corrupt"):
        load_dataset(tmp_path / "cut.npz")


def test_a_binary_file_with_grey_pixels_is_refused(tmp_path: Path) -> None:
    images = np.full((2, 28, 28), 3, np.uint8)
    path = tmp_path / "b.npz"
    np.savez(path, images=images, factors=np.zeros((2, 1)), schema=np.array(BINARY.dumps()))
    with pytest.raises(CausalSpritesError, match="image 0 has pixels other than 0/1"):
        load_dataset(path)


def test_dataset_in_memory_checks_its_arrays() -> None:
    images, factors = arrays()
    data = Dataset(SCHEMA, images, factors.astype(np.float32))
    assert data.factors(slice(None)).dtype == np.float64
    with pytest.raises(CausalSpritesError, match=r"index 12 is out of range 0\.\.11"):
        data.images([12])
    with pytest.raises(CausalSpritesError, match="indices must be integers"):
        data.factors(np.array([0.5]))
