"""The bad-input table of docs/RELIABILITY.md: each case is a CLI call on a bad input, with the
exact one-line message and exit code it must give. `python tests/reliability.py` rewrites the
table from what the CLI really says; tests/test_reliability.py checks the table stays true."""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

from causal_sprites.cli import app
from causal_sprites.config import PRESETS
from causal_sprites.data import pendulum
from causal_sprites.data.dataset import write_dataset
from causal_sprites.data.load import load_data
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.train import fit

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
Maker = Callable[[Path, Path, Path], str]
#: Paths a case's args may name besides {tmp} and {bad}: what `make_fixtures` wrote.
Fixtures = dict[str, Path]


@dataclass(frozen=True)
class Case:
    """A bad input: `args` may hold {tmp}, {bad} (what `make` wrote) and `Fixtures` names."""

    area: str
    what: str
    args: tuple[str, ...]
    make: Maker | None = None


def _write(name: str, content: bytes) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        (tmp / name).write_bytes(content)
        return str(tmp / name)

    return make


def _npz(name: str, change: Callable[[dict[str, np.ndarray]], object]) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        with np.load(data, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        change(arrays)
        np.savez(tmp / name, **arrays)
        return str(tmp / name)

    return make


def _cut(tmp: Path, data: Path, run: Path) -> str:
    (tmp / "cut.npz").write_bytes(data.read_bytes()[:4000])
    return str(tmp / "cut.npz")


def _cut_hdf5(tmp: Path, data: Path, run: Path) -> str:
    with h5py.File(tmp / "whole.hdf5", "w") as handle:
        handle["imgs"] = np.zeros((4, 64, 64), np.uint8)
    (tmp / "cut.hdf5").write_bytes((tmp / "whole.hdf5").read_bytes()[:900])
    return str(tmp / "cut.hdf5")


def _pickled(arrays: dict[str, np.ndarray]) -> None:
    evil = np.empty(1, dtype=object)
    evil[0] = {"payload": 1}
    arrays["imgs"] = evil


def _run_copy(change: Callable[[Path], object]) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        copy = tmp / "copy"
        copy.mkdir()
        for item in run.iterdir():
            if item.is_file():
                (copy / item.name).write_bytes(item.read_bytes())
        change(copy)
        return str(copy)

    return make


def _config_change(**changes: object) -> Callable[[Path], None]:
    def change(run_dir: Path) -> None:
        raw = json.loads((run_dir / "config.json").read_text())
        raw.update(changes)
        (run_dir / "config.json").write_text(json.dumps(raw))

    return change


def _png(name: str, image: np.ndarray) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        import matplotlib.image

        matplotlib.image.imsave(tmp / name, image, cmap="gray", vmin=0, vmax=1)
        return str(tmp / name)

    return make


def _queries(lines: list[str]) -> Maker:
    return _write("queries.jsonl", ("\n".join(lines) + "\n").encode())


def _spec(text: str) -> Maker:
    return _write("spec.yaml", ("num_samples: 10\n" + text).encode())


SQUARES_CSV = "file,colour,size\nimg0.png,red,4\nimg1.png,green,8\nimg2.png,blue,4\n"


def _images_csv(csv: str = SQUARES_CSV, factors: str = "", odd: np.ndarray | None = None) -> Maker:
    """Three 32x48 RGB squares and a CSV naming them (the third image `odd` when given), with
    FACTORS.yaml at {tmp}/factors.yaml when `factors` says something."""

    def make(tmp: Path, data: Path, run: Path) -> str:
        from PIL import Image

        for k in range(3):
            image = np.zeros((32, 48, 3), np.uint8)
            image[8:16, 4 * k : 4 * k + 8] = 200
            Image.fromarray(image if k < 2 or odd is None else odd).save(tmp / f"img{k}.png")
        (tmp / "labels.csv").write_text(csv)
        if factors:
            (tmp / "factors.yaml").write_text(factors)
        return str(tmp / "labels.csv")

    return make


def _many_classes(tmp: Path, data: Path, run: Path) -> str:
    rows = "".join(f"img{k}.png,{k}\n" for k in range(10_001))
    (tmp / "many.csv").write_text("file,id\n" + rows)
    return str(tmp / "many.csv")


def _transparent(tmp: Path, data: Path, run: Path) -> str:
    """The third image has one transparent pixel: found only while the images are written."""
    from PIL import Image

    path = _images_csv()(tmp, data, run)
    with Image.open(tmp / "img2.png") as opaque:
        image = opaque.convert("RGBA")
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.save(tmp / "img2.png")
    return path


def _h5(**arrays: np.ndarray) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        with h5py.File(tmp / "shapes.h5", "w") as handle:
            for key, array in arrays.items():
                handle[key] = array
        return str(tmp / "shapes.h5")

    return make


def _arrays(name: str, **arrays: np.ndarray) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        np.savez(tmp / name, allow_pickle=False, **arrays)
        return str(tmp / name)

    return make


def _one_factor_set(name: str, side: int, classes: list[float]) -> Maker:
    """A dataset file of side x side grey images, one per class index, of one factor 'size'."""
    schema = {"factors": [{"name": "size", "classes": ["4", "8"]}], "image_shape": [side, side, 1]}
    images = np.zeros((len(classes), side, side), np.uint8)
    return _arrays(
        name, images=images, factors=np.array(classes)[:, None], schema=np.array(json.dumps(schema))
    )


def _pendulum(tmp: Path, data: Path, run: Path) -> str:
    """A dataset file of 40 images of the pendulum."""
    return str(pendulum.write(tmp / "pendulum.npz", 40, progress=False)[0])


SHOW = ("data", "show", "--data", "{data}", "--out", "{tmp}/grid.png")
TRAIN = ("train", "--out", "{tmp}/new", "--data", "{data}", "--preset", "tiny", "--no-progress")
EDIT = ("edit", "{run}", "--data", "{data}", "--index", "0", "--out", "{tmp}/edit.png")
CF = ("counterfactual", "{run}", "--data", "{data}", "--out", "{tmp}/cf.png")
VARIANT = ("data", "variant", "{bad}", "--out", "{tmp}/variant.npz")
IMPORT = ("data", "import", "{bad}", "--out", "{tmp}/out.npz")
DECLARED = (*IMPORT, "--factors", "{tmp}/factors.yaml")
#: Two 8x8 squares far apart: each is a sprite, together no dSprites image.
TWO_SPRITES = np.zeros((64, 64))
TWO_SPRITES[8:16, 8:16] = TWO_SPRITES[44:52, 40:48] = 1
SQUARES = ("{squares_run}", "--out", "{tmp}/q.png")
PENDULUM = ("data", "generate", "--dataset", "pendulum", "--out", "{tmp}/pendulum.npz")
BENCH = ("benchmark", "--out", "{tmp}/bench", "--dataset")
#: A continuous variant spec's head: posX a continuous child of scale.
CONTINUOUS = "num_samples: 10\nedges: [[scale, posX]]\nmechanisms:\n"
BAD_TABLE = "edges: [[shape, scale]]\nmechanisms:\n  scale:\n    parents: [shape]\n    table: "

CASES: list[Case] = [
    Case("data file", "missing file", ("data", "verify", "{tmp}/missing.npz")),
    Case("data file", "empty file", ("data", "verify", "{bad}"), _write("empty.npz", b"")),
    Case("data file", "text named .npz", ("data", "verify", "{bad}"), _write("t.npz", b"hello")),
    Case("data file", "truncated npz", ("data", "verify", "{bad}"), _cut),
    Case("data file", "truncated hdf5", ("data", "verify", "{bad}"), _cut_hdf5),
    Case("data file", "a key missing", ("data", "verify", "{bad}"), _npz("keys.npz", lambda a: a.pop("latents_values"))),
    Case("data file", "images of the wrong shape", ("data", "verify", "{bad}"), _npz("shape.npz", lambda a: a.update(imgs=a["imgs"][:, :32, :32]))),
    Case("data file", "images of the wrong dtype", ("data", "verify", "{bad}"), _npz("dtype.npz", lambda a: a.update(imgs=a["imgs"].astype(np.float32)))),
    Case("data file", "non-binary pixels", ("data", "verify", "{bad}"), _npz("gray.npz", lambda a: a.update(imgs=a["imgs"] * 2))),
    Case("data file", "pickled arrays", ("data", "verify", "{bad}"), _npz("pickle.npz", _pickled)),
    Case("data file", "a subset is not the full official file", ("data", "verify", "{data}")),
    Case("data file", "checksum mismatch", ("data", "verify", "{data}", "--sha256", "0" * 64)),
    Case("data file", "classes out of range", ("data", "show", "--data", "{bad}", "--out", "{tmp}/grid.png"), _npz("range.npz", lambda a: a["latents_classes"].__setitem__((0, 1), 7))),
    Case("data file", "no file for --data", ("data", "show", "--data", "{tmp}/no.npz", "--out", "{tmp}/g.png")),
    Case("data download", "no network", ("data", "download", "--out", "{tmp}", "--url", "http://127.0.0.1:9/x.npz")),
    Case("factor values", "unknown shape name", (*SHOW, "--given", "shape=circle")),
    Case("factor values", "index out of range", (*SHOW, "--given", "scale=9")),
    Case("factor values", "unknown factor", (*SHOW, "--given", "colour=1")),
    Case("factor values", "factor given twice", (*SHOW, "--given", "shape=1", "--given", "shape=2")),
    Case("factor values", "no '='", (*SHOW, "--given", "heart")),
    Case("factor values", "not an integer", (*SHOW, "--given", "orientation=1.5")),
    Case("factor values", "no image matches", ("data", "show", "--data", "{data}", "--given", "posX=3", "--given", "posY=3", "--given", "orientation=3", "--out", "{tmp}/g.png")),
    Case("CLI arguments", "count below its minimum", (*SHOW, "--num", "0")),
    Case("CLI arguments", "required option missing", ("data", "show", "--data", "{data}")),
    Case("CLI arguments", "unknown command", ("fly",)),
    Case("CLI arguments", "train without a budget", TRAIN),
    Case("CLI arguments", "unknown preset", (*TRAIN, "--steps", "1", "--preset", "huge")),
    Case("CLI arguments", "unknown split", (*TRAIN, "--steps", "1", "--split", "odd")),
    Case("CLI arguments", "unknown learning-rate schedule", (*TRAIN, "--steps", "1", "--lr-schedule", "linear")),
    Case("CLI arguments", "negative steps", (*TRAIN, "--steps", "-1")),
    Case("CLI arguments", "unknown device", (*TRAIN, "--steps", "1", "--device", "quantum")),
    Case("CLI arguments", "CUDA asked for, none present", (*TRAIN, "--steps", "1", "--device", "cuda")),
    Case("CLI arguments", "graph edge without an arrow", (*TRAIN, "--steps", "1", "--graph", "shape-scale")),
    Case("CLI arguments", "graph with a cycle", (*TRAIN, "--steps", "1", "--graph", "shape->scale,scale->shape")),
    Case("CLI arguments", "graph naming no factor", (*TRAIN, "--steps", "1", "--graph", "shape->size")),
    Case("run directory", "train into an existing run", ("train", "--out", "{run}", "--data", "{data}", "--steps", "1", "--no-progress")),
    Case("run directory", "run directory missing", ("evaluate", "{tmp}/nowhere")),
    Case("run directory", "not a run directory", ("evaluate", "{tmp}")),
    Case("checkpoint", "weights missing", ("evaluate", "{bad}"), _run_copy(lambda d: (d / "model.safetensors").unlink())),
    Case("checkpoint", "a pickle renamed .safetensors", ("evaluate", "{bad}"), _run_copy(lambda d: (d / "model.safetensors").write_bytes(pickle.dumps({"a": 1})))),
    Case("checkpoint", "truncated weights", ("evaluate", "{bad}"), _run_copy(lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]))),
    Case("checkpoint", "config from a newer version", ("evaluate", "{bad}"), _run_copy(_config_change(version=99))),
    Case("checkpoint", "config naming a class", ("evaluate", "{bad}"), _run_copy(_config_change(model={"decoder": "os.system"}))),
    Case("checkpoint", "config with unknown keys", ("evaluate", "{bad}"), _run_copy(_config_change(__class__="os.system"))),
    Case("checkpoint", "config naming an odd data path", ("evaluate", "{bad}"), _run_copy(_config_change(data="/etc/passwd"))),
    Case("checkpoint", "config that is not JSON", ("evaluate", "{bad}"), _run_copy(lambda d: (d / "config.json").write_text("{"))),
    Case("checkpoint", "weights of another architecture", ("evaluate", "{bad}"), _run_copy(_config_change(model={"decoder_hidden": 7}))),
    Case("factor values", "edit to an unknown shape", (*EDIT, "--set", "shape=circle")),
    Case("factor values", "edit without a value", (*EDIT, "--set", "scale")),
    Case("factor values", "dataset index out of range", ("edit", "{run}", "--data", "{data}", "--index", "100000", "--set", "shape=1", "--out", "{tmp}/e.png")),
    Case("factor values", "do() out of range", (*CF, "--index", "0", "--do", "posX=99")),
    Case("factor values", "condition on an out-of-range value", ("condition", "{run}", "--given", "scale=7", "--out", "{tmp}/c.png")),
    Case("factor values", "intervene on an unknown factor", ("intervene", "{run}", "--do", "color=0", "--out", "{tmp}/i.png")),
    Case("CLI arguments", "counterfactual without --do", (*CF, "--index", "0")),
    Case("uploaded image", "not a PNG", (*CF, "--image", "{bad}", "--do", "shape=2"), _write("fake.png", b"not a png")),
    Case("uploaded image", "not 64x64", (*CF, "--image", "{bad}", "--do", "shape=2"), _png("big.png", np.zeros((128, 128)))),
    Case("uploaded image", "not binary", (*CF, "--image", "{bad}", "--do", "shape=2"), _png("gray.png", np.full((64, 64), 0.5))),
    Case("uploaded image", "blank: no sprite explains it", ("counterfactual", "pretrained", "--image", "{bad}", "--do", "shape=2"), _png("blank.png", np.zeros((64, 64)))),
    Case("uploaded image", "two sprites: no sprite explains it", ("counterfactual", "pretrained", "--image", "{bad}", "--do", "shape=2"), _png("two.png", TWO_SPRITES)),
    Case("uploaded image", "infer: not binary", ("infer", "pretrained", "--image", "{bad}"), _png("gray.png", np.full((64, 64), 0.5))),
    Case("CLI arguments", "infer without an image source", ("infer", "pretrained")),
    Case("CLI arguments", "infer with --top 0", ("infer", "pretrained", "--index", "0", "--top", "0")),
    Case("query file", "a line that is not JSON", (*CF, "--queries", "{bad}", "--do", "shape=2"), _queries(['{"index": 0}', "{oops"])),
    Case("query file", "an index out of range", (*CF, "--queries", "{bad}", "--do", "shape=2"), _queries(['{"index": 999999}'])),
    Case("query file", "a bad do value", (*CF, "--queries", "{bad}"), _queries(['{"index": 0, "do": {"shape": "blob"}}'])),
    Case("query file", "missing file", (*CF, "--queries", "{tmp}/none.jsonl", "--do", "shape=2")),
    Case("variant spec", "missing spec", ("data", "variant", "{tmp}/none.yaml", "--out", "{tmp}/v.npz")),
    Case("variant spec", "bad YAML", VARIANT, _write("spec.yaml", b"edges: [[shape, scale]\n")),
    Case("variant spec", "a cycle", VARIANT, _spec("edges: [[shape, scale], [scale, shape]]\n")),
    Case("variant spec", "an unknown factor", VARIANT, _spec("edges: [[shape, colour]]\n")),
    Case("variant spec", "a table of the wrong shape", VARIANT, _spec(BAD_TABLE + "[[1, 1], [1, 1], [1, 1]]\n")),
    Case("variant spec", "negative probabilities", VARIANT, _spec(BAD_TABLE + "[[-1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]\n")),
    Case("variant spec", "a row summing to zero", VARIANT, _spec(BAD_TABLE + "[[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]\n")),
    Case("variant spec", "no samples", VARIANT, _write("spec.yaml", b"num_samples: 0\n")),
    Case("variant spec", "truth spec for discovery missing", ("discover", "--data", "{data}", "--truth", "{tmp}/none.yaml")),
    Case("CLI arguments", "negative decoder learning rate", (*TRAIN, "--steps", "1", "--decoder-lr", "-1")),
    Case("import", "CSV naming a missing image", IMPORT, _images_csv(SQUARES_CSV.replace("img2", "img9"))),
    Case("import", "CSV without the file column", IMPORT, _images_csv(SQUARES_CSV.replace("file,", "path,"))),
    Case("import", "CSV with a column twice", IMPORT, _images_csv(SQUARES_CSV.replace("size", "colour"))),
    Case("import", "CSV row with a field missing", IMPORT, _images_csv(SQUARES_CSV.replace("green,8", "green"))),
    Case("import", "a class declared that no row has", DECLARED, _images_csv(factors="factors:\n  colour: {classes: [red, green, blue, pink]}\n")),
    Case("import", "text where a number was declared", DECLARED, _images_csv(factors="factors:\n  colour: {kind: continuous}\n")),
    Case("import", "FACTORS.yaml with an unknown key", DECLARED, _images_csv(factors="colums: [size]\n")),
    Case("import", "images of mixed sizes", IMPORT, _images_csv(odd=np.zeros((40, 48, 3), np.uint8))),
    Case("import", "images of mixed modes", IMPORT, _images_csv(odd=np.zeros((32, 48), np.uint8))),
    Case("import", "an image failing halfway through the import", IMPORT, _transparent),
    Case("import", "a factor with one class", IMPORT, _images_csv(SQUARES_CSV.replace("green", "red").replace("blue", "red"))),
    Case("import", "a factor with more than 10,000 classes", IMPORT, _many_classes),
    Case("import", ".h5 without images", IMPORT, _h5(labels=np.zeros((3, 6)))),
    Case("import", ".h5 whose labels count does not match", IMPORT, _h5(images=np.zeros((3, 64, 64, 3), np.uint8), labels=np.zeros((4, 6)))),
    Case("import", "MPI3D-layout .npz of no known size", IMPORT, _arrays("mpi3d.npz", images=np.zeros((5, 64, 64, 3), np.uint8))),
    Case("import", ".npz of an unknown layout", IMPORT, _arrays("other.npz", pixels=np.zeros(3))),
    Case("import", "--out not an .npz", ("data", "import", "{data}", "--out", "{tmp}/out.zip")),
    Case("dataset file", "info on a file that is no dataset", ("data", "info", "{data}")),
    Case("dataset file", "a class out of range", ("data", "info", "{bad}"), _one_factor_set("dataset.npz", 28, [0.0, 2.0])),
    Case("factor values", "do() a class the data lacks", ("counterfactual", "{squares_run}", "--index", "0", "--do", "hue=purple", "--out", "{tmp}/cf.png")),
    Case("factor values", "do() a class index out of range", ("intervene", "{squares_run}", "--do", "hue=3", "--out", "{tmp}/i.png")),
    Case("factor values", "data show given a class the data lacks", ("data", "show", "--data", "{squares}", "--given", "hue=purple", "--out", "{tmp}/grid.png")),
    Case("uploaded image", "not the run's image size", ("counterfactual", *SQUARES, "--image", "{bad}", "--do", "hue=red"), _png("other.png", np.zeros((40, 40)))),
    Case("uploaded image", "the run's size turned on its side", ("counterfactual", *SQUARES, "--image", "{bad}", "--do", "hue=red"), _png("turned.png", np.zeros((48, 32)))),
    Case("uploaded image", "infer: not the run's image size", ("infer", "{squares_run}", "--image", "{bad}"), _png("other.png", np.zeros((40, 40)))),
    Case("dataset file", "train on images of a side no model is built for", ("train", "--out", "{tmp}/new", "--data", "{bad}", "--steps", "1", "--no-progress"), _one_factor_set("small.npz", 20, [0.0, 1.0])),
    Case("import", "images of a side no model is built for", IMPORT, _images_csv(SQUARES_CSV.replace("img0", "img2").replace("img1", "img2"), odd=np.zeros((20, 20, 3), np.uint8))),
    Case("continuous factor", "do() out of range", ("intervene", *SQUARES, "--do", "left=99")),
    Case("continuous factor", "do() not a number", ("intervene", *SQUARES, "--do", "left=wide")),
    Case("continuous factor", "do() NaN", ("counterfactual", *SQUARES, "--index", "0", "--do", "left=nan")),
    Case("continuous factor", "do() infinite", ("intervene", *SQUARES, "--do", "left=-inf")),
    Case("continuous factor", "edit to a value out of range", ("edit", *SQUARES, "--index", "0", "--set", "side=3.5")),
    Case("continuous factor", "a fraction for a categorical factor", ("intervene", *SQUARES, "--do", "hue=0.5")),
    Case("continuous factor", "an empty range", ("condition", *SQUARES, "--given", "side=12..9")),
    Case("continuous factor", "a range beyond the factor's range", ("condition", *SQUARES, "--given", "side=12..99")),
    Case("continuous factor", "a range on a categorical factor", ("condition", *SQUARES, "--given", "hue=1..2")),
    Case("continuous factor", "evidence too rare", ("condition", *SQUARES, "--given", "side=15.99..16", "--given", "left=4..4.01")),
    Case("continuous factor", "values as evidence (each within 1 % of its range) too rare", ("condition", *SQUARES, "--given", "side=16", "--given", "left=4")),
    Case("continuous factor", "a query file's do() out of range", ("counterfactual", *SQUARES, "--queries", "{bad}"), _queries(['{"index": 0, "do": {"left": 99}}'])),
    Case("continuous factor", "data show given a value out of range", ("data", "show", "--data", "{bad}", "--given", "pendulum_angle=50", "--out", "{tmp}/grid.png"), _pendulum),
    Case("continuous factor", "the pose decoder (default preset) on data it does not draw", ("train", "--out", "{tmp}/new", "--data", "{bad}", "--preset", "default", "--steps", "1", "--no-progress"), _pendulum),
    Case("pendulum", "a size other than 64 or 96", (*PENDULUM, "--size", "50")),
    Case("pendulum", "negative shadow noise", (*PENDULUM, "--shadow-noise", "-1")),
    Case("pendulum", "a grid and a number of images", (*PENDULUM, "--grid", "causalvae", "--num-samples", "10")),
    Case("pendulum", "unknown dataset", ("data", "generate", "--dataset", "nope", "--out", "{tmp}/pendulum.npz")),
    Case("pendulum", "no --out", ("data", "generate", "--dataset", "pendulum")),
    Case("pendulum", "a pendulum option for dSprites", ("data", "generate", "--size", "96")),
    Case("continuous variant", "a mechanism without a range", VARIANT, _spec("num_samples: 10\nmechanisms:\n  posX: {sigmoid: {noise_scale: 1}}\n")),
    Case("continuous variant", "a range the renderer does not draw", VARIANT, _spec("num_samples: 10\nmechanisms:\n  posX: {range: [0, 2], sigmoid: {}}\n")),
    Case("continuous variant", "a weight naming an unknown parent", VARIANT, _spec(CONTINUOUS + "  posX: {range: [0, 1], sigmoid: {weights: {size: 1}}}\n")),
    Case("continuous variant", "weights that miss an edge", VARIANT, _spec(CONTINUOUS + "  posX: {range: [0, 1], sigmoid: {}}\n")),
    Case("continuous variant", "a noise scale of 0", VARIANT, _spec("num_samples: 10\nmechanisms:\n  scale: {range: [0.5, 1], sigmoid: {noise_scale: 0}}\n")),
    Case("continuous variant", "a continuous shape", VARIANT, _spec("num_samples: 10\nmechanisms:\n  shape: {range: [0, 2], sigmoid: {}}\n")),
    Case("continuous variant", "a categorical factor with a continuous parent", VARIANT, _spec("num_samples: 10\nedges: [[scale, orientation]]\nmechanisms:\n  scale: {range: [0.5, 1], sigmoid: {}}\n  orientation: {shift: {strength: 1}}\n")),
    Case("continuous factor", "evaluate --counterfactual without a known truth", ("evaluate", "{squares_run}", "--data", "{squares}", "--counterfactual")),
    Case("uploaded image", "a colour picture for a black-and-white run", ("infer", "pretrained", "--image", "{bad}"), _png("red.png", np.dstack([np.ones((64, 64)), np.zeros((64, 64)), np.zeros((64, 64))]))),
    Case("uploaded image", "transparent pixels", ("counterfactual", *SQUARES, "--image", "{bad}", "--do", "hue=red"), _png("clear.png", np.dstack([np.ones((32, 48, 3)), np.r_[np.zeros((1, 48)), np.ones((31, 48))]]))),
    Case("benchmark", "unknown dataset", (*BENCH, "nowhere", "--model", "identity")),
    Case("benchmark", "a dataset without a known truth", (*BENCH, "{squares}", "--model", "identity")),
    Case("benchmark", "no queries", (*BENCH, "{bad}", "--model", "identity", "--queries", "0"), _pendulum),
    Case("benchmark", "10^9 queries", (*BENCH, "{bad}", "--model", "identity", "--queries", "1000000000"), _pendulum),
    Case("benchmark", "a model module that does not import", (*BENCH, "{bad}", "--model", "nosuchmodule:make"), _pendulum),
    Case("benchmark", "a factory the module lacks", (*BENCH, "{bad}", "--model", "tests.user_model:nothing"), _pendulum),
    Case("benchmark", "a factory that raises", (*BENCH, "{bad}", "--model", "tests.user_model:raising"), _pendulum),
    Case("benchmark", "a model without counterfactual", (*BENCH, "{bad}", "--model", "tests.user_model:broken"), _pendulum),
    Case("benchmark", "a run directory that does not exist", (*BENCH, "{bad}", "--model", "{tmp}/norun"), _pendulum),
    Case("benchmark", "a model named twice", (*BENCH, "{bad}", "--model", "identity", "--model", "identity"), _pendulum),
    Case("benchmark", "seed without a baseline (MLP) run among the models", (*BENCH, "dsprites", "--model", "seed")),
    Case("benchmark", "seed beside runs none of which is a baseline run", (*BENCH, "dsprites", "--model", "{run}", "--model", "seed")),
    Case("benchmark", "seed asked to answer no queries", (*BENCH, "dsprites", "--model", "seed", "--seed-queries", "0")),
    Case("benchmark", "seed named twice", (*BENCH, "dsprites", "--model", "{run}", "--model", "seed", "--model", "seed")),
    Case("benchmark", "the data's oracle given no training steps", (*BENCH, "{bad}", "--model", "identity", "--oracle-steps", "0")),
    Case("CLI arguments", "the small-change term on binary images", (*TRAIN, "--steps", "1", "--change-weight", "0.1")),
    Case("CLI arguments", "an unknown pixel-noise rule", ("counterfactual", "{run}", "--data", "{data}", "--out", "{tmp}/cf.png", "--index", "0", "--do", "shape=2", "--pixel-noise", "mean")),
    Case("CLI arguments", "negative gradient clip", (*TRAIN, "--steps", "1", "--grad-clip", "-1")),
]  # fmt: skip

runner = CliRunner()


def make_fixtures(scratch: Path) -> Fixtures:
    """What the cases name: {data}, a tiny official-format data file (600 rows); {squares}, 36
    colour squares (32x48) of a categorical hue and a continuous left and side (pixels), side
    following left; {run} and {squares_run}, runs trained 2 steps on them (left -> side)."""
    from causal_sprites.data.dsprites import DSprites
    from causal_sprites.data.factors import NUM_IMAGES, classes_to_values, index_to_classes
    from causal_sprites.data.render import render

    classes = index_to_classes(np.sort(np.random.default_rng(1).choice(NUM_IMAGES, 600, False)))
    data = scratch / "tiny.npz"
    np.savez_compressed(
        data,
        imgs=render(classes),
        latents_classes=classes,
        latents_values=classes_to_values(classes),
    )
    tiny = PRESETS["tiny"]
    config = replace(tiny, data=str(data), train=replace(tiny.train, max_steps=2))
    run = scratch / "run"
    fit(run, config, DSprites.load(data), torch.device("cpu"), progress=False)
    left = np.random.default_rng(0).uniform(4.0, 30.0, 36)
    rows = np.stack([np.arange(36) % 3, left, np.clip(5.0 + 0.3 * (left - 4.0), 4.0, 16.0)], 1)
    images = np.full((36, 32, 48, 3), 120, np.uint8)
    for image, (hue, start, side) in zip(images, rows.astype(int), strict=True):
        image[8 : 8 + side, start : start + side] = np.eye(3, dtype=np.uint8)[hue] * 200
    factors = (
        categorical("hue", ["red", "green", "blue"]),
        Factor("left", "continuous", low=4.0, high=30.0, unit="px"),
        Factor("side", "continuous", low=4.0, high=16.0, unit="px"),
    )
    schema = Schema("squares", factors, (32, 48, 3))
    squares = write_dataset(scratch / "squares.npz", images, rows, schema)
    preset = PRESETS["images"]
    config = replace(
        preset,
        data=str(squares),
        graph=(("left", "side"),),
        model=replace(preset.model, conv_channels=8, encoder_hidden=32),
        train=replace(preset.train, max_steps=2, bf16=False, batch_size=16, num_eval_images=16),
    )
    fit(scratch / "squares_run", config, load_data(squares), torch.device("cpu"), progress=False)
    return dict(data=data, run=run, squares=squares, squares_run=scratch / "squares_run")


@dataclass(frozen=True)
class Outcome:
    """Exit code, stderr with paths replaced, and the files the CLI itself created."""

    code: int
    message: str
    created: list[str]


def run_case(case: Case, tmp: Path, fixtures: Fixtures) -> Outcome:
    """Make the case's bad input in `tmp`, run the CLI; the message has paths replaced."""
    bad = case.make(tmp, fixtures["data"], fixtures["run"]) if case.make else ""
    fields = {"tmp": str(tmp), "bad": bad} | {name: str(path) for name, path in fixtures.items()}
    watched = [tmp, *(path for path in fixtures.values() if path.is_dir())]
    before = {path for root in watched for path in root.rglob("*")}
    result = runner.invoke(app, [arg.format(**fields) for arg in case.args])
    after = {path for root in watched for path in root.rglob("*")}
    created = sorted(str(p) for p in after - before if p.is_file())
    message = result.stderr.strip()
    for name, path in sorted(fields.items(), key=lambda field: -len(field[1])):
        if path:  # longest first: {bad} lies inside {tmp}
            message = message.replace(path, "{" + name + "}")
    return Outcome(result.exit_code, message, created)


def usage_line(message: str) -> str:
    """A usage error's last line (typer prints a usage box; its message line is what counts)."""
    lines = [line.strip(" │╭╰─╮╯") for line in message.splitlines()]
    return next((line for line in reversed(lines) if line and "Try" not in line), "")


def table_rows(outcomes: list[tuple[Case, Outcome]]) -> list[str]:
    rows = []
    for number, (case, outcome) in enumerate(outcomes, 1):
        command = "causal-sprites " + " ".join(case.args)
        shown = outcome.message if outcome.code == 1 else usage_line(outcome.message)
        rows.append(
            f"| {number} | {case.area} | {case.what} | `{command}` | {outcome.code} | "
            f"`{shown.replace('|', '/')}` |"
        )
    return rows


def write_doc(rows: list[str]) -> None:
    head, _, _ = DOC.read_text().partition("<!-- table -->")
    header = "| # | area | bad input | command | exit | message (stderr) |\n| --- | --- | --- | --- | --- | --- |\n"
    DOC.write_text(head + "<!-- table -->\n" + header + "\n".join(rows) + "\n")


def main() -> None:
    """Rewrite the table in docs/RELIABILITY.md from what the CLI says now."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        fixtures = make_fixtures(Path(scratch))
        outcomes = []
        for number, case in enumerate(CASES, 1):
            tmp = Path(scratch) / f"case{number}"
            tmp.mkdir()
            outcomes.append((case, run_case(case, tmp, fixtures)))
    write_doc(table_rows(outcomes))
    print(f"wrote {len(outcomes)} cases to {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
