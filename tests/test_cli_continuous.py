"""Continuous factors through the command line: a CSV whose FACTORS.yaml declares two columns
continuous is imported and trained on, and every query takes and gives values in their units
(do(left=20), a range as evidence, the readout's spread)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_run import run
from tests.test_continuous import sliding

HUES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The sliding squares as PNGs and a CSV (left and side declared continuous), imported,
    and a run trained 40 steps on them with left -> side."""
    root = tmp_path_factory.mktemp("sliding")
    images, factors, _ = sliding(96, seed=0)
    lines = ["file,hue,left,side"]
    for k, (image, (hue, left, side)) in enumerate(zip(images, factors, strict=True)):
        Image.fromarray(image).save(root / f"{k}.png")
        lines.append(f"{k}.png,{HUES[int(hue)]},{left:.4f},{side:.4f}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / "FACTORS.yaml").write_text(
        "factors:\n"
        "  left: {kind: continuous, low: 4, high: 30, unit: px}\n"
        "  side: {kind: continuous, low: 4, high: 16, unit: px}\n"
    )
    run(
        "data", "import", root / "labels.csv", "--factors", root / "FACTORS.yaml",
        "--out", root / "sliding.npz",
    )  # fmt: skip
    run(
        "train", "--out", root / "run", "--data", root / "sliding.npz", "--steps", 40,
        "--graph", "left->side", "--no-progress",
    )  # fmt: skip
    return root, root / "run", images


def test_queries_take_and_give_continuous_values(
    trained: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    _, run_dir, _ = trained
    out, _ = run(
        "intervene", run_dir, "--do", "left=20", "--samples", 3, "--out", tmp_path / "i.png",
        "--json",
    )  # fmt: skip
    record = json.loads(out)
    assert record["do"] == {"left": 20.0}
    assert [s["left"] for s in record["samples"]] == [20.0, 20.0, 20.0]
    assert set(record["continuous"]) == {"left", "side"} and "hue" in record["marginals"]
    out, _ = run(
        "condition", run_dir, "--given", "side=8..10", "--samples", 2,
        "--out", tmp_path / "c.png", "--json",
    )  # fmt: skip
    record = json.loads(out)
    assert record["given"] == {"side": [8.0, 10.0]}
    assert all(8.0 <= s["side"] <= 10.0 for s in record["samples"])
    out, _ = run(
        "counterfactual", run_dir, "--index", 0, "--do", "left=20", "--json",
        "--out-npz", tmp_path / "cf.npz",
    )  # fmt: skip
    query = json.loads(out)["queries"][0]
    assert query["do"] == {"left": 20.0} and query["counterfactual"]["left"] == 20.0
    inferred = json.loads(run("infer", run_dir, "--index", 1, "--json")[0])["images"][0]
    assert set(inferred["spread"]) == {"left", "side"}
    assert all(v >= 0 for v in inferred["spread"].values())
    assert isinstance(inferred["candidates"][0]["factors"]["left"], float)


def test_a_do_outside_the_data_is_said_to_be_an_extrapolation(
    trained: tuple[Path, Path, np.ndarray],
) -> None:
    """side follows left (5 + 0.3 (left - 4) + N(0, 0.5)): at left near 4 a side of 16 is 20
    noise SDs away, one near the mechanism is not, and a root is never flagged."""
    _, run_dir, _ = trained
    _, factors, _ = sliding(96, seed=0)
    index = int(np.argmin(factors[:, 1]))  # the square furthest left
    typical = 5.0 + 0.3 * (factors[index, 1] - 4.0)
    args = ("counterfactual", run_dir, "--index", index, "--json")
    far = json.loads(run(*args, "--do", "side=16")[0])["queries"][0]
    assert len(far["warnings"]) == 1 and far["warnings"][0].startswith(
        "do(side=16) has probability"
    )
    assert "extrapolation" in far["warnings"][0]
    near = json.loads(run(*args, "--do", f"side={typical:.2f}")[0])["queries"][0]
    assert near["warnings"] == []
    moved = json.loads(run(*args, "--do", "left=29")[0])["queries"][0]
    assert moved["warnings"] == []  # left is a root: no mechanism to leave
    text, _ = run(*args[:-1], "--do", "side=16")
    assert "  warning: do(side=16) has probability" in text


def test_bad_continuous_input_is_one_line(trained: tuple[Path, Path, np.ndarray]) -> None:
    _, run_dir, _ = trained
    never = "/tmp/never.png"
    for command, option, value, message in (
        ("intervene", "--do", "left=99", "out of its range"),
        ("intervene", "--do", "left=wide", "expected a number"),
        ("condition", "--given", "hue=1..2", "a range is for continuous factors"),
        ("condition", "--given", "side=12..9", "empty range"),
    ):
        _, error = run(command, run_dir, option, value, "--out", never, code=1)
        assert message in error
