"""`data import` from each layout (a CSV of PNGs, 3dshapes' .h5, MPI3D's .npz, dSprites' official
files, a dataset file), written on the spot: what is read (schema, classes, pixels, row order),
and every bad input: one line, exit 1, no output left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_run import run
from PIL import Image

from causal_sprites.data import dataset as dataset_module
from causal_sprites.data import importers
from causal_sprites.data.dataset import load_dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import SCHEMA as DSPRITES_SCHEMA
from causal_sprites.data.importers import import_source, mpi3d_sizes
from causal_sprites.errors import CausalSpritesError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}
#: Rows of the squares CSV: (colour, size, left), deliberately in no sorted order.
ROWS = [
    ("green", 12, 20),
    ("red", 4, 2),
    ("blue", 8, 30),
    ("red", 12, 10),
    ("green", 4, 2),
    ("blue", 4, 20),
    ("red", 8, 30),
]
SHAPES3D_VALUES = [
    np.linspace(0, 0.9, 10),
    np.linspace(0, 0.9, 10),
    np.linspace(0, 0.9, 10),
    np.linspace(0.75, 1.25, 8),
    np.arange(4.0),
    np.linspace(-30, 30, 15),
]


def square(colour: str, size: int, x: int) -> np.ndarray:
    """A 32x48 RGB image (32, 48, 3): a coloured square of `size` pixels at column `x`."""
    image = np.full((32, 48, 3), 245, np.uint8)
    image[8 : 8 + size, x : x + size] = COLOURS[colour]
    return image


def write_csv(folder: Path, rows: list[tuple], images: list[np.ndarray], header: str) -> Path:
    """PNGs in `folder/img/` and a CSV naming them (column `file` first) with `rows`' cells."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for k, (row, image) in enumerate(zip(rows, images, strict=True)):
        Image.fromarray(image).save(folder / "img" / f"{k}.png")
        lines.append(",".join([f"img/{k}.png", *map(str, row)]))
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


@pytest.fixture
def squares_csv(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "src", ROWS, [square(*row) for row in ROWS], "file,colour,size,left"
    )


def test_a_csv_of_colour_images_of_another_size(squares_csv: Path, tmp_path: Path) -> None:
    path, lines = import_source(squares_csv, tmp_path / "squares.npz")
    data = load_dataset(path)
    schema = data.schema
    assert schema.name == "labels" and schema.image_shape == (32, 48, 3) and not schema.binary
    assert schema.names == ("colour", "size", "left")
    assert schema.factor("colour").classes == ("blue", "green", "red")  # text, sorted
    assert schema.factor("size").classes == ("4", "8", "12")  # numbers, sorted as numbers
    assert schema.factor("size").values == (4.0, 8.0, 12.0)
    np.testing.assert_array_equal(data.images(slice(None)), [square(*row) for row in ROWS])
    expected = [
        [schema.factor(n).classes.index(str(v)) for n, v in zip(schema.names, row, strict=True)]
        for row in ROWS
    ]
    np.testing.assert_array_equal(data.factors(slice(None)), expected)  # CSV order kept
    assert lines == [
        f"{squares_csv}: CSV of image files, 7 images",
        "images: 32x48 pixels (height x width), RGB, 8-bit",
        "factor colour: categorical, 3 classes: blue, green, red (text, sorted)",
        "factor size: ordered categorical, 3 classes: 4, 8, 12 (numbers, sorted)",
        "factor left: ordered categorical, 4 classes: 2, 10, 20, 30 (numbers, sorted)",
    ]


def test_factors_yaml_declares_order_kinds_and_columns(squares_csv: Path, tmp_path: Path) -> None:
    text = squares_csv.read_text().replace("file,", "path,")
    squares_csv.write_text(text)
    spec = tmp_path / "factors.yaml"
    spec.write_text(
        "name: squares\nfile_column: path\ncolumns: [left, colour]\nfactors:\n"
        "  colour: {classes: [red, green, blue], cyclic: true}\n"
        "  left: {kind: continuous, unit: px}\n"
    )
    out, _ = run("data", "import", squares_csv, "--out", tmp_path / "s.npz", "--factors", spec)
    assert out.splitlines()[-1] == str(tmp_path / "s.npz")
    assert "factor left: continuous, 2..30 px (range of the data)" in out
    assert "factor colour: cyclic categorical, 3 classes: red, green, blue (order declared)" in out
    data = load_dataset(tmp_path / "s.npz")
    assert data.schema.name == "squares" and data.schema.names == ("left", "colour")
    assert data.schema.factor("colour").cyclic and data.schema.factor("left").kind == "continuous"
    np.testing.assert_array_equal(
        data.factors(slice(None)),
        [[x, ["red", "green", "blue"].index(colour)] for colour, _, x in ROWS],
    )
    info = json.loads(run("data", "info", tmp_path / "s.npz", "--json")[0])
    assert info["num_images"] == 7 and info["image_shape"] == [32, 48, 3]
    assert info["counts"] == {"colour": [3, 2, 2]} and info["ranges"] == {"left": [2.0, 30.0]}
    assert info["schema"] == data.schema.to_json()
    text_out = run("data", "info", tmp_path / "s.npz")[0]
    assert "colour counts: red (3), green (2), blue (2)" in text_out
    assert "left in the data: 2..30" in text_out


@pytest.mark.parametrize(("on", "binary"), [(255, True), (1, True), (128, False)])
def test_grey_images_binary_when_only_two_values(tmp_path: Path, on: int, binary: bool) -> None:
    images = [np.zeros((28, 30), np.uint8) for _ in range(4)]
    for k, image in enumerate(images):
        image[k : k + 5, 3:9] = on
    csv = write_csv(tmp_path, [("a",), ("b",), ("a",), ("b",)], images, "file,kind")
    data = load_dataset(import_source(csv, tmp_path / "g.npz")[0])
    assert data.schema.binary is binary and data.schema.image_shape == (28, 30, 1)
    expected = np.stack(images) // (on if binary else 1)
    np.testing.assert_array_equal(data.images(slice(None)), expected)


def test_large_imports_stream_into_a_memory_mapped_file(
    squares_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_module, "CHUNK_BYTES", 3 * 32 * 48 * 3)  # 3 images a chunk
    path, _ = import_source(squares_csv, tmp_path / "m.npz", images_file_bytes=1)
    data = load_dataset(path)
    assert data.memory_mapped and (tmp_path / "m.images.npy").is_file()
    np.testing.assert_array_equal(data.images([6, 0, 3]), [square(*ROWS[k]) for k in (6, 0, 3)])
    # A dataset file imports as itself: copied through, checked, either way of storing images.
    copy, lines = import_source(path, tmp_path / "copy.npz")
    assert lines[0] == f"{path}: dataset file, 7 images"
    again = load_dataset(copy)
    assert not again.memory_mapped and again.schema == data.schema
    np.testing.assert_array_equal(again.images(slice(None)), data.images(slice(None)))
    np.testing.assert_array_equal(again.factors(slice(None)), data.factors(slice(None)))


def test_an_import_failing_halfway_leaves_nothing(
    squares_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_module, "CHUNK_BYTES", 2 * 32 * 48 * 3)
    image = Image.fromarray(square("red", 8, 30)).convert("RGBA")
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.save(squares_csv.parent / "img" / "5.png")  # found only when its chunk is decoded
    out = tmp_path / "out"
    out.mkdir()
    for threshold in (1, 10**9):
        with pytest.raises(CausalSpritesError, match=r"5\.png has transparent pixels"):
            import_source(squares_csv, out / "s.npz", images_file_bytes=threshold)
        assert list(out.iterdir()) == []


def write_shapes3d(path: Path, num: int = 30, labels_rows: int | None = None) -> tuple:
    """A tiny 3dshapes-layout .h5: random images (N, 64, 64, 3) and labels on the real grids."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (num, 64, 64, 3), dtype=np.uint8)
    classes = np.stack([rng.integers(0, len(v), labels_rows or num) for v in SHAPES3D_VALUES], 1)
    labels = np.stack([v[classes[:, k]] for k, v in enumerate(SHAPES3D_VALUES)], 1)
    with h5py.File(path, "w") as file:
        file["images"] = images
        file["labels"] = labels
    return images, labels


def test_a_3dshapes_layout_h5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "CHUNK_BYTES", 7 * 64 * 64 * 3)  # read in 5 chunks
    images, labels = write_shapes3d(tmp_path / "3dshapes.h5")
    path, lines = import_source(tmp_path / "3dshapes.h5", tmp_path / "s.npz")
    data = load_dataset(path)
    assert data.schema.names == importers.SHAPES3D_FACTORS
    assert data.schema.image_shape == (64, 64, 3) and data.schema.name == "3dshapes"
    for k, factor in enumerate(data.schema.factors):
        distinct = np.unique(labels[:, k])
        assert factor.values == tuple(distinct)
        classes = data.factors(slice(None))[:, k].astype(int)
        np.testing.assert_array_equal(np.asarray(factor.values)[classes], labels[:, k])
    assert data.schema.factor("scale").classes[:2] == ("0.75", "0.821")
    assert [f.name for f in data.schema.factors if f.cyclic] == [
        "floor_hue",
        "wall_hue",
        "object_hue",
    ]
    assert [f.name for f in data.schema.factors if not f.ordered] == ["shape"]
    np.testing.assert_array_equal(data.images(slice(None)), images)
    assert lines[:2] == [
        f"{tmp_path / '3dshapes.h5'}: 3dshapes layout, 30 images",
        "images: 64x64 pixels (height x width), RGB, 8-bit",
    ]


def test_mpi3d_sizes_follow_from_the_image_count() -> None:
    assert mpi3d_sizes(1_036_800) == (6, 6, 2, 3, 3, 40, 40)
    assert mpi3d_sizes(460_800) == (4, 4, 2, 3, 3, 40, 40)
    with pytest.raises(CausalSpritesError, match="1,000 images: MPI3D's layout has 1,036,800"):
        mpi3d_sizes(1000)


def test_an_mpi3d_layout_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real sizes make 460,800 images at least: the same code on a 2x2x2x2x2x2x3 grid.
    monkeypatch.setattr(importers, "MPI3D_SIZES", ((2, 2, 2, 2, 2, 2, 3),))
    monkeypatch.setattr(dataset_module, "CHUNK_BYTES", 50 * 64 * 64 * 3)
    images = np.random.default_rng(4).integers(0, 256, (192, 64, 64, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "mpi3d_toy.npz", images=images)
    path, _ = import_source(tmp_path / "mpi3d_toy.npz", tmp_path / "m.npz")
    data = load_dataset(path)
    assert data.schema.names == importers.MPI3D_FACTORS
    assert data.schema.sizes == (2, 2, 2, 2, 2, 2, 3)
    ordered = [f.name for f in data.schema.factors if f.ordered]
    assert ordered == ["object_size", "camera_height", "horizontal_axis", "vertical_axis"]
    factors = data.factors(slice(None))
    np.testing.assert_array_equal(
        factors, np.stack(np.unravel_index(np.arange(192), (2,) * 6 + (3,)), 1)
    )
    np.testing.assert_array_equal(
        factors[[1, 3, 191]], [[0] * 6 + [1], [0] * 5 + [1, 0], [1] * 6 + [2]]
    )
    np.testing.assert_array_equal(data.images(slice(None)), images)


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_dsprites_official_files(
    tmp_path: Path,
    tiny_data_file: Path,
    suffix: str,
    write_dsprites: Callable[[Path, dict[str, np.ndarray]], Path],
) -> None:
    source = tiny_data_file
    if suffix == ".hdf5":
        with np.load(tiny_data_file, allow_pickle=False) as arrays:
            source = write_dsprites(tmp_path / "tiny.hdf5", {k: arrays[k] for k in arrays.files})
    data = load_dataset(import_source(source, tmp_path / "d.npz")[0])
    original = DSprites.load(tiny_data_file)
    assert data.schema == DSPRITES_SCHEMA and data.schema.binary
    np.testing.assert_array_equal(data.factors(slice(None)), original.classes(slice(None))[:, 1:])
    np.testing.assert_array_equal(data.images(slice(None)), original.images(slice(None)))


def _many_classes(tmp: Path) -> Path:
    rows = "\n".join(f"img/{k}.png,{k}" for k in range(10_001))
    (tmp / "many.csv").write_text(f"file,id\n{rows}\n")
    return tmp / "many.csv"


def _squares(
    tmp: Path, rows: list[tuple] = ROWS[:3], header: str = "file,colour,size,left"
) -> Path:
    return write_csv(tmp, rows, [square(*row[:3]) for row in rows], header)


def _edit_csv(old: str, new: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        csv = _squares(tmp)
        csv.write_text(csv.read_text().replace(old, new))
        return csv

    return make


def _mixed(second: np.ndarray) -> Callable[[Path], Path]:
    return lambda tmp: write_csv(tmp, [("a",), ("b",)], [square("red", 4, 2), second], "file,kind")


def _h5(**keys: np.ndarray) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        with h5py.File(tmp / "shapes.h5", "w") as file:
            for key, array in keys.items():
                file[key] = array
        return tmp / "shapes.h5"

    return make


def _npz(**keys: np.ndarray) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        np.savez(tmp / "source.npz", **keys)
        return tmp / "source.npz"

    return make


def _text_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("hello")
    return tmp / "notes.txt"


def _declared(text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / "factors.yaml").write_text(text)
        return _squares(tmp)

    return make


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing image": (_edit_csv("img/1.png", "img/none.png"), "line 3: no such image: .*none.png"),
    "no file column": (_edit_csv("file,", "name,"), "no column 'file' \\(columns: name, colour"),
    "column twice": (_edit_csv("size,left", "size,size"), "column 'size' appears twice"),
    "empty cell": (_edit_csv(",red,", ",,"), "line 3: column 'colour' is empty"),
    "short row": (_edit_csv(",red,4,2", ",red,4"), "line 3: 3 fields, expected 4"),
    "empty class": (
        _declared("factors:\n  colour: {classes: [red, green, blue, pink]}\n"),
        "colour class 'pink', declared in the factors file, has no rows",
    ),
    "undeclared class": (
        _declared("factors:\n  colour: {classes: [red, green]}\n"),
        "line 4: colour is 'blue', not one of its declared classes red, green",
    ),
    "text declared a number": (
        _declared("factors:\n  colour: {kind: continuous}\n"),
        "line 2: colour is 'green', not a number \\(declared continuous\\)",
    ),
    "declared column missing": (
        _declared("columns: [colour, hue]\n"),
        "no column 'hue'",
    ),
    "unknown yaml key": (_declared("colums: [left]\n"), "unknown key 'colums'"),
    "mixed sizes": (
        _mixed(np.zeros((40, 48, 3), np.uint8)),
        r"1\.png is 40x48 pixels \(height x width\) but .*0\.png is 32x48: all images must share "
        "a size",
    ),
    "mixed modes": (
        _mixed(np.zeros((32, 48), np.uint8)),
        r"1\.png is grey but .*0\.png is RGB: all images must share a mode",
    ),
    "not an image": (_edit_csv("img/1.png", "labels.csv"), "labels.csv is not a readable image"),
    "one class": (
        lambda tmp: _squares(tmp, [("red", 4, 2), ("red", 8, 3)]),
        "factor 'colour' has 1 class; a factor needs at least 2",
    ),
    "over 10,000 classes": (
        _many_classes,
        "factor 'id' has 10,001 classes, more than 10,000: declare it continuous",
    ),
    "h5 without images": (_h5(labels=np.zeros((3, 6))), "no images \\(3dshapes' layout: images"),
    "h5 labels count": (
        _h5(images=np.zeros((3, 64, 64, 3), np.uint8), labels=np.zeros((4, 6))),
        "4 labels for 3 images",
    ),
    "h5 labels columns": (
        _h5(images=np.zeros((3, 64, 64, 3), np.uint8), labels=np.zeros((3, 5))),
        "labels are \\(3, 5\\), expected \\(N, 6\\)",
    ),
    "mpi3d count": (
        _npz(images=np.zeros((5, 64, 64, 3), np.uint8)),
        "5 images: MPI3D's layout has 1,036,800",
    ),
    "unknown npz": (_npz(pixels=np.zeros(3)), "unknown layout: an .npz with keys pixels"),
    "unknown file": (_text_file, "unknown layout: expected a .csv"),
    "a folder": (lambda tmp: tmp, "is a folder: give the CSV that names its images"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    make, message = BAD_INPUTS[case]
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = make(src_dir)
    spec = src_dir / "factors.yaml"
    factors = ["--factors", spec] if spec.exists() else []
    with pytest.raises(CausalSpritesError, match=message):
        import_source(src, out_dir / "d.npz", spec if spec.exists() else None)
    _, err = run("data", "import", src, "--out", out_dir / "d.npz", *factors, code=1)
    assert str(src) in err or str(spec) in err  # the line names the file at fault
    assert list(out_dir.iterdir()) == []


def test_out_must_be_an_npz_in_a_folder_that_exists(squares_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(CausalSpritesError, match=r"must end in \.npz"):
        import_source(squares_csv, tmp_path / "d.zip")
    with pytest.raises(CausalSpritesError, match="no such folder"):
        import_source(squares_csv, tmp_path / "nowhere" / "d.npz")
    dataset, _ = import_source(squares_csv, tmp_path / "s.npz")
    (tmp_path / "f.yaml").write_text("name: x\n")
    with pytest.raises(CausalSpritesError, match=r"--factors applies to a CSV; .* is a dataset"):
        import_source(dataset, tmp_path / "t.npz", tmp_path / "f.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.yaml", "s.npz", "src"]
