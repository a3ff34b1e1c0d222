"""The bad-input table of docs/RELIABILITY.md: each case is a CLI call on a bad input, with the
exact one-line message and exit code it must give. `python tests/reliability.py` rewrites the
table from what the CLI really says; tests/test_reliability.py checks the table stays true."""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from typer.testing import CliRunner

from causal_sprites.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
Maker = Callable[[Path, Path, Path], str]


@dataclass(frozen=True)
class Case:
    """A bad input: `args` may hold {tmp}, {data}, {run} and {bad} (what `make` wrote)."""

    area: str
    what: str
    args: tuple[str, ...]
    make: Maker | None = None


def _write(name: str, content: bytes) -> Maker:
    def make(tmp: Path, data: Path, run: Path) -> str:
        (tmp / name).write_bytes(content)
        return str(tmp / name)

    return make


def _npz(name: str, change: Callable[[dict[str, np.ndarray]], None]) -> Maker:
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


def _run_copy(change: Callable[[Path], None]) -> Maker:
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
        np.savez(tmp / name, **arrays)
        return str(tmp / name)

    return make


BAD_CLASS_DATASET = _arrays(
    "dataset.npz",
    images=np.zeros((2, 28, 28), np.uint8),
    factors=np.array([[0.0], [2.0]]),
    schema=np.array(
        '{"factors": [{"name": "size", "classes": ["4", "8"]}], "image_shape": [28, 28, 1]}'
    ),
)


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
BAD_TABLE = "edges: [[shape, scale]]\nmechanisms:\n  scale:\n    parents: [shape]\n    table: "

CASES: list[Case] = [
    Case("data file", "missing file", ("data", "verify", "{tmp}/missing.npz")),
    Case("data file", "empty file", ("data", "verify", "{bad}"), _write("empty.npz", b"")),
    Case("data file", "text named .npz", ("data", "verify", "{bad}"), _write("t.npz", b"hello")),
    Case("data file", "truncated npz", ("data", "verify", "{bad}"), _cut),
    Case("data file", "truncated hdf5", ("data", "verify", "{bad}"), _cut_hdf5),
    Case(
        "data file",
        "a key missing",
        ("data", "verify", "{bad}"),
        _npz("keys.npz", lambda a: a.pop("latents_values")),
    ),
    Case(
        "data file",
        "images of the wrong shape",
        ("data", "verify", "{bad}"),
        _npz("shape.npz", lambda a: a.update(imgs=a["imgs"][:, :32, :32])),
    ),
    Case(
        "data file",
        "images of the wrong dtype",
        ("data", "verify", "{bad}"),
        _npz("dtype.npz", lambda a: a.update(imgs=a["imgs"].astype(np.float32))),
    ),
    Case(
        "data file",
        "non-binary pixels",
        ("data", "verify", "{bad}"),
        _npz("gray.npz", lambda a: a.update(imgs=a["imgs"] * 2)),
    ),
    Case("data file", "pickled arrays", ("data", "verify", "{bad}"), _npz("pickle.npz", _pickled)),
    Case("data file", "a subset is not the full official file", ("data", "verify", "{data}")),
    Case(
        "data file",
        "checksum mismatch",
        ("data", "verify", "{data}", "--sha256", "0" * 64),
    ),
    Case(
        "data file",
        "classes out of range",
        ("data", "show", "--data", "{bad}", "--out", "{tmp}/grid.png"),
        _npz("range.npz", lambda a: a["latents_classes"].__setitem__((0, 1), 7)),
    ),
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
    Case("dataset file", "a class out of range", ("data", "info", "{bad}"), BAD_CLASS_DATASET),
]  # fmt: skip

runner = CliRunner()


def make_fixtures(scratch: Path) -> tuple[Path, Path]:
    """A tiny official-format data file (600 rows) and a run trained 2 steps on it."""
    from dataclasses import replace

    import torch

    from causal_sprites.config import PRESETS
    from causal_sprites.data.dsprites import DSprites
    from causal_sprites.data.factors import NUM_IMAGES, classes_to_values, index_to_classes
    from causal_sprites.data.render import render
    from causal_sprites.train import fit

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
    return data, run


@dataclass(frozen=True)
class Outcome:
    """Exit code, stderr with paths replaced, and the files the CLI itself created."""

    code: int
    message: str
    created: list[str]


def run_case(case: Case, tmp: Path, data: Path, run: Path) -> Outcome:
    """Make the case's bad input in `tmp`, run the CLI; the message has paths replaced."""
    bad = case.make(tmp, data, run) if case.make else ""
    fields = {"tmp": str(tmp), "data": str(data), "run": str(run), "bad": bad}
    before = set(tmp.rglob("*")) | set(run.rglob("*"))
    result = runner.invoke(app, [arg.format(**fields) for arg in case.args])
    after = set(tmp.rglob("*")) | set(run.rglob("*"))
    created = sorted(str(p) for p in after - before if p.is_file())
    message = result.stderr.strip()
    for name in ("bad", "tmp", "data", "run"):
        if fields[name]:
            message = message.replace(fields[name], "{" + name + "}")
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
        data, run = make_fixtures(Path(scratch))
        outcomes = []
        for number, case in enumerate(CASES, 1):
            tmp = Path(scratch) / f"case{number}"
            tmp.mkdir()
            outcomes.append((case, run_case(case, tmp, data, run)))
    write_doc(table_rows(outcomes))
    print(f"wrote {len(outcomes)} cases to {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
