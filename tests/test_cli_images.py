"""Your own images through the command line: a folder of colour PNGs with a CSV of labels is
imported, trained on, and every query command answers with the data's own factor names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_run import run
from tests.test_any_images import squares

HUES, SIDES, LEFTS = ("red", "green", "blue"), (6, 10, 14), (6, 16, 26, 36)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The squares as PNG files and a CSV, imported, and a run trained 40 steps on them."""
    root = tmp_path_factory.mktemp("own")
    images, classes, _ = squares(3, seed=0)
    lines = ["file,hue,side,left"]
    for k, (image, (hue, side, left)) in enumerate(zip(images, classes, strict=True)):
        Image.fromarray(image).save(root / f"{k}.png")
        lines.append(f"{k}.png,{HUES[hue]},{SIDES[side]},{LEFTS[left]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    out, _ = run("data", "import", root / "labels.csv", "--out", root / "squares.npz")
    assert out.splitlines()[-1] == str(root / "squares.npz")
    run(
        "train", "--out", root / "run", "--data", root / "squares.npz", "--steps", 40,
        "--no-progress",
    )  # fmt: skip
    return root, root / "run", images


def test_the_run_trains_with_the_images_preset_and_reports_bits_per_dim(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    _, run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["decoder"] == "conv" and config["schema"]["name"] == "labels"
    assert [f["name"] for f in config["schema"]["factors"]] == ["hue", "side", "left"]


def test_every_query_answers_with_the_data_s_names(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    root, run_dir, images = trained
    out, _ = run(
        "counterfactual", run_dir, "--index", 0, "--index", 4, "--do", "hue=red",
        "--out", tmp_path / "cf.png", "--out-npz", tmp_path / "cf.npz", "--json",
    )  # fmt: skip
    queries = json.loads(out)["queries"]
    assert json.loads(out)["pixel_noise"] == "median"  # 8-bit images: the median answer
    assert queries[0]["factual"] == {"hue": 2, "side": 0, "left": 0}  # sorted classes: red is 2
    assert queries[0]["counterfactual"]["hue"] == 2 and queries[1]["do"] == {"hue": 2}
    with np.load(tmp_path / "cf.npz") as arrays:
        np.testing.assert_array_equal(arrays["factual"], images[[0, 4]])
        assert arrays["counterfactual"].shape == (2, 32, 48, 3)
    run(
        "counterfactual", run_dir, "--index", 3, "--do", "left=36", "--out-npz",
        tmp_path / "same.npz", "--json",
    )  # fmt: skip
    with np.load(tmp_path / "same.npz") as arrays:  # image 3 is at left=36: do() changes nothing
        np.testing.assert_array_equal(arrays["counterfactual"], arrays["factual"])
    for rule in ("median", "draw"):
        said, _ = run("counterfactual", run_dir, "--index", 0, "--do", "hue=blue", "--pixel-noise",
                      rule, "--out-npz", tmp_path / f"{rule}.npz", "--json")  # fmt: skip
        assert json.loads(said)["pixel_noise"] == rule
    with np.load(tmp_path / "median.npz") as median, np.load(tmp_path / "draw.npz") as drawn:
        assert (drawn["counterfactual"] != median["counterfactual"]).any()
    read, _ = run("counterfactual", run_dir, "--image", root / "3.png", "--do", "side=6", "--json")
    assert json.loads(read)["queries"][0]["labels"] == "inferred"
    inferred = json.loads(run("infer", run_dir, "--index", 1, "--top", 2, "--json")[0])
    assert set(inferred["images"][0]["candidates"][0]["factors"]) == {"hue", "side", "left"}
    assert inferred["images"][0]["true"] == {"hue": 2, "side": 0, "left": 1}
    given = json.loads(
        run("condition", run_dir, "--given", "side=14", "--out", tmp_path / "c.png", "--json")[0]
    )
    assert given["posterior"]["side"] == [0.0, 0.0, 1.0]
    assert all(sample["side"] == 2 for sample in given["samples"])
    done = json.loads(
        run("intervene", run_dir, "--do", "hue=green", "--out", tmp_path / "i.png", "--json")[0]
    )
    assert done["marginals"]["hue"] == [0.0, 1.0, 0.0]
    for name in ("reconstruct", "edit"):
        options = ("--set", "hue=blue") if name == "edit" else ()
        assert run(name, run_dir, "--index", 2, *options, "--out", tmp_path / f"{name}.png")[0]
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.size[0] > 100


def test_discovery_from_the_labels_and_from_the_pixels(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    root, run_dir, _ = trained
    labels = json.loads(run("discover", "--data", root / "squares.npz", "--json")[0])
    assert labels["edges"] == [] and labels["factors"] == ["hue", "side", "left"]
    assert all(t["p_value"] == 1.0 for t in labels["tests"])  # every combination equally often
    pixels = json.loads(run("discover", run_dir, "--num-images", 108, "--json")[0])
    assert pixels["labels"] == "posterior" and pixels["factors"] == ["hue", "side", "left"]


def test_data_show_draws_from_the_dataset(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    root, _, _ = trained
    out, _ = run("data", "show", "--data", root / "squares.npz", "--given", "hue=blue",
                 "--num", 4, "--out", tmp_path / "blue.png")  # fmt: skip
    assert out.strip() == str(tmp_path / "blue.png")
    _, err = run("data", "show", "--data", root / "squares.npz", "--given", "shape=1",
                 "--out", tmp_path / "no.png", code=1)  # fmt: skip
    assert "unknown factor 'shape'; factors are hue, side, left" in err


def test_bad_input_on_your_own_images_fails_in_one_line(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    _, run_dir, _ = trained
    _, err = run("counterfactual", run_dir, "--index", 0, "--do", "shape=heart", code=1)
    assert "unknown factor 'shape'; factors are hue, side, left" in err
    _, err = run("counterfactual", run_dir, "--index", 0, "--do", "hue=purple", code=1)
    assert "or one of blue, green, red" in err
    _, err = run("counterfactual", run_dir, "--index", 0, "--do", "hue=red", "--pixel-noise",
                 "mean", code=1)  # fmt: skip
    assert err.strip() == "error: unknown pixel noise 'mean'; use median or draw"
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(small)
    _, err = run("infer", run_dir, "--image", small, code=1)
    assert "is 28x28 pixels (height x width); expected 32x48" in err
    _, err = run("reconstruct", run_dir, "--index", 0, "--out", tmp_path / "r.png", "--data",
                 tmp_path / "missing.npz", code=1)  # fmt: skip
    assert "missing.npz" in err
    _, err = run("reconstruct", "pretrained", "--index", 0, "--out", tmp_path / "r.png", "--data",
                 run_dir.parent / "squares.npz", code=1)  # fmt: skip
    assert "is not what run pretrained was trained on" in err
