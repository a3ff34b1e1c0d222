"""The `condition`, `intervene` and `counterfactual` commands: JSON, arrays, figures, batch query
files, one-line errors (exit 1) and usage errors (exit 2)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import PNG, run
from PIL import Image

from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS
from causal_sprites.train import fit


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory, subset_data: DSprites) -> Path:
    rows = np.arange(len(subset_data))
    path = tmp_path_factory.mktemp("data") / "subset.npz"
    np.savez_compressed(
        path,
        imgs=subset_data.images(rows),
        latents_classes=subset_data.classes(rows),
        latents_values=subset_data.values(rows),
    )
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, subset_data: DSprites) -> Path:
    """A tiny run trained for a few steps on the subset."""
    tiny = PRESETS["tiny"]
    config = replace(
        tiny, train=replace(tiny.train, max_steps=3, bf16=False, num_eval_images=16, batch_size=16)
    )
    out = tmp_path_factory.mktemp("run")
    fit(out, config, subset_data, torch.device("cpu"), progress=False)
    return out


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_counterfactual_by_index_writes_json_arrays_and_figure(
    run_dir: Path, data_file: Path, subset_data: DSprites, tmp_path: Path
) -> None:
    rows = [0, 7, 100]
    index_args = [arg for row in rows for arg in ("--index", row)]
    out, npz = tmp_path / "cf.png", tmp_path / "cf.npz"
    stdout, _ = run(
        "counterfactual", run_dir, *index_args, "--do", "shape=heart", "--do", "scale=3",
        "--out", out, "--out-npz", npz, "--data", data_file, "--json",
    )  # fmt: skip
    record = json.loads(stdout)
    assert record["out"] == str(out) and record["out_npz"] == str(npz)
    assert record["seconds"] > 0
    assert [q["index"] for q in record["queries"]] == rows
    for query, classes in zip(record["queries"], subset_data.factors(rows), strict=True):
        assert query["factual"] == dict(zip(FACTORS, classes.tolist(), strict=True))
        expected = {**query["factual"], "shape": 2, "scale": 3}
        assert query["counterfactual"] == expected and query["labels"] == "given"
    assert out.read_bytes().startswith(PNG)
    with np.load(npz) as arrays:
        assert arrays["factual"].dtype == np.uint8
        assert arrays["counterfactual"].shape == (3, 64, 64)
        assert np.array_equal(arrays["factual"], subset_data.images(rows))
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_counterfactual_of_the_observed_value_returns_the_image(
    run_dir: Path, data_file: Path, subset_data: DSprites, tmp_path: Path
) -> None:
    shape = int(subset_data.factors([5])[0, 0])
    npz = tmp_path / "same.npz"
    stdout, _ = run(
        "counterfactual", run_dir, "--index", 5, "--do", f"shape={shape}",
        "--out-npz", npz, "--data", data_file,
    )  # fmt: skip
    assert "index 5: no change" in stdout
    with np.load(npz) as arrays:
        assert np.array_equal(arrays["counterfactual"], arrays["factual"])


def test_counterfactual_of_an_image_file_infers_labels(
    run_dir: Path, subset_data: DSprites, tmp_path: Path
) -> None:
    image = write_png(tmp_path / "sprite.png", subset_data.images(3) * 255)
    stdout, _ = run("counterfactual", run_dir, "--image", image, "--do", "posX=0", "--json")
    (query,) = json.loads(stdout)["queries"]
    assert query["index"] is None and query["image"] == str(image)
    assert query["labels"] == "inferred" and query["counterfactual"]["posX"] == 0


def test_query_file_runs_mixed_queries_in_order(
    run_dir: Path, data_file: Path, subset_data: DSprites, tmp_path: Path
) -> None:
    write_png(tmp_path / "a.png", subset_data.images(9))
    lines = [
        {"index": 1, "do": {"shape": "ellipse"}},
        {"image": "a.png", "do": {"scale": 2}},
        {"index": 2},
        {"index": 3, "do": {"shape": 0, "posY": 31}},
    ]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    npz = tmp_path / "batch.npz"
    stdout, _ = run(
        "counterfactual", run_dir, "--queries", queries, "--do", "orientation=4",
        "--data", data_file, "--out-npz", npz, "--json",
    )  # fmt: skip
    results = json.loads(stdout)["queries"]
    assert [q["index"] for q in results] == [1, None, 2, 3]
    assert results[0]["counterfactual"]["shape"] == 1
    assert results[1]["counterfactual"]["scale"] == 2 and results[1]["labels"] == "inferred"
    assert results[2]["do"] == {"orientation": 4}
    assert results[2]["counterfactual"]["orientation"] == 4
    assert results[3]["counterfactual"]["posY"] == 31
    with np.load(npz) as arrays:
        assert np.array_equal(arrays["factual"][[0, 2, 3]], subset_data.images([1, 2, 3]))
        assert np.array_equal(arrays["factual"][1], subset_data.images(9))


def test_condition_and_intervene(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "condition.png"
    stdout, _ = run(
        "condition", run_dir, "--given", "scale=5", "--given", "shape=heart", "--samples", 6,
        "--out", out, "--json",
    )  # fmt: skip
    record = json.loads(stdout)
    assert record["given"] == {"scale": 5, "shape": 2} and len(record["samples"]) == 6
    assert all(s["scale"] == 5 and s["shape"] == 2 for s in record["samples"])
    assert record["posterior"]["shape"] == [0.0, 0.0, 1.0]
    assert sum(record["posterior"]["posX"]) == pytest.approx(1.0, abs=1e-4)
    assert out.read_bytes().startswith(PNG)
    out = tmp_path / "intervene.png"
    stdout, _ = run("intervene", run_dir, "--do", "posX=31", "--samples", 4, "--out", out, "--json")
    record = json.loads(stdout)
    assert record["do"] == {"posX": 31} and all(s["posX"] == 31 for s in record["samples"])
    assert record["marginals"]["posX"][31] == 1.0
    assert out.read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index", 0, "--do", "shape=star"], "bad value 'star' for shape"),
        (["--index", 0, "--do", "colour=1"], "unknown factor 'colour'"),
        (["--index", 0, "--do", "scale=6"], "out of range 0..5"),
        (["--index", 0, "--do", "shape"], "expected factor=value"),
        (["--index", 10_000, "--do", "shape=0"], "index 10000 is out of range"),
        (["--image", "missing.png", "--do", "shape=0"], "cannot read"),
        (["--image", "small.png", "--do", "shape=0"], "is 32x32 pixels (height x width)"),
        (["--image", "gray.png", "--do", "shape=0"], "is not binary: it has 3 gray levels"),
        (["--image", "text.png", "--do", "shape=0"], "cannot read"),
        (["--queries", "missing.jsonl"], "does not exist"),
        (["--queries", "bad.jsonl"], "line 2: not valid JSON"),
        (["--queries", "both.jsonl"], "line 1: give exactly one of index and image"),
        (["--queries", "nodo.jsonl"], 'line 1: no do(); give "do" or --do'),
        (["--queries", "baddo.jsonl"], "line 1: bad value 'circle' for shape"),
        (["--queries", "keys.jsonl"], "line 1: unknown keys ['what']"),
        (["--queries", "empty.jsonl"], "holds no queries"),
    ],
)
def test_bad_counterfactual_input_fails_in_one_line(
    run_dir: Path,
    data_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[object],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "small.png", np.zeros((32, 32)))
    write_png(tmp_path / "gray.png", np.tile(np.array([0, 128, 255]), (64, 22))[:, :64])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "bad.jsonl").write_text('{"index": 0, "do": {"shape": 1}}\n{"index": 1,\n')
    (tmp_path / "both.jsonl").write_text('{"index": 0, "image": "a.png", "do": {"shape": 1}}\n')
    (tmp_path / "nodo.jsonl").write_text('{"index": 0}\n')
    (tmp_path / "baddo.jsonl").write_text('{"index": 0, "do": {"shape": "circle"}}\n')
    (tmp_path / "keys.jsonl").write_text('{"index": 0, "what": 1}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    _, err = run("counterfactual", run_dir, *args, "--data", data_file, code=1)
    assert message in err


@pytest.mark.parametrize(
    "args",
    [
        ["counterfactual", "{run}", "--do", "shape=0"],
        ["counterfactual", "{run}", "--index", 0, "--image", "a.png", "--do", "shape=0"],
        ["counterfactual", "{run}", "--index", 0],
        ["counterfactual", "{run}", "--index", "zero", "--do", "shape=0"],
        ["condition", "{run}", "--given", "scale=5"],
        ["intervene", "{run}", "--out", "x.png"],
        ["intervene", "{run}", "--do", "posX=1", "--out", "x.png", "--samples", 0],
    ],
)
def test_usage_errors_exit_2(run_dir: Path, args: list[object]) -> None:
    run(*[str(run_dir) if a == "{run}" else a for a in args], code=2)


def test_bad_condition_and_intervene_fail_in_one_line(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    _, err = run("condition", run_dir, "--given", "size=1", "--out", out, code=1)
    assert "unknown factor 'size'" in err
    _, err = run("intervene", run_dir, "--do", "posY=32", "--out", out, code=1)
    assert "out of range 0..31" in err
    _, err = run("intervene", tmp_path / "nowhere", "--do", "posY=3", "--out", out, code=1)
    assert "does not exist" in err
    assert not out.exists()
