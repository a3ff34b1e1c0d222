"""The HTML report: one self-contained page with every section, figure and table; computed
metrics are shown as computed; missing pieces are marked, not fatal; the write is atomic."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from causal_sprites import report
from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.report import (
    SECTIONS,
    default_path,
    fmt,
    graph_svg,
    metric_tables,
    write_report,
)
from causal_sprites.runs import PRETRAINED_DIR
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

#: Every shape, two scales and orientations, a 3x3 grid of positions: 108 images, holding the
#: sprite the standard figures edit (square, scale 5, orientation 5, posX 10, posY 20).
GRID = np.meshgrid([0, 1, 2], [2, 5], [0, 5], [0, 10, 31], [0, 20, 31], indexing="ij")
CLASSES = np.stack([g.reshape(-1) for g in GRID], 1)
#: Evaluation scores as `evaluation.evaluate` returns them (computing them takes long on 2 cores).
SCORES: dict[str, Any] = {
    "test_nelbo": 123.456,
    "test_recon": 120.0,
    "test_kl": 3.456,
    "classifier_accuracy": {
        "shape": 0.5,
        "scale": 0.25,
        "orientation": 0.1,
        "posX": 0.2,
        "posY": 0.3,
    },
    "recon_iou": 0.875,
}
IMG = re.compile(r'<img src="([^"]+)" alt="([^"]*)"')


@pytest.fixture(scope="module")
def data() -> DSprites:
    return DSprites.from_arrays(render(CLASSES), CLASSES)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, data: DSprites) -> Path:
    """A tiny run trained a few steps (a real metrics.jsonl, a model of its own)."""
    tiny = PRESETS["tiny"]
    config = replace(
        tiny, train=replace(tiny.train, max_steps=3, bf16=False, num_eval_images=16, batch_size=16)
    )
    out = tmp_path_factory.mktemp("run")
    fit(out, config, data, torch.device("cpu"), progress=False)
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/results with a data and a training benchmark."""
    out = tmp_path_factory.mktemp("bench")
    fidelity = {"animation": {"num_images": 320, "exact_matches": 316, "mean_iou_at_label": 0.9}}
    (out / "data.json").write_text(json.dumps({"fidelity": fidelity}))
    results = [{"preset": "baseline", "steps": 10, "test_nelbo": 99.5, "images_per_s": 1234.5}]
    (out / "train-cpu.json").write_text(json.dumps({"results": results}))
    return out


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, run_dir: Path, data: DSprites, bench: Path
) -> str:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert write_report(load_run(run_dir), data, out, scores=SCORES, bench=bench) == out
    return out.read_text()


def test_every_section_is_there_with_its_figures_and_nothing_external(page: str) -> None:
    for section, _ in SECTIONS:
        assert f'<section id="{section}">' in page
    images = IMG.findall(page)
    captions = " ".join(alt for _, alt in images)
    for word in ("Random images", "NELBO", "reconstructions", "edit", "Traversals"):
        assert word in captions
    for word in ("Conditioning on scale = 5", "do(posX = 31)", "do(shape = heart)"):
        assert word in captions
    for uri, _ in images:
        assert uri.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert picture.format == "PNG" and min(picture.size) > 50
    summary = "dSprites: 108 binary images of 64x64 pixels (height x width); shape (3: "
    summary += "square, ellipse, heart); "
    assert summary + "scale (6); orientation (40); posX (32); posY (32)." in page
    assert page.count("<svg") == 2  # the discovered graphs: from labels, from pixels
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "Not available" not in page


def test_tables_show_the_numbers(page: str, run_dir: Path) -> None:
    assert "<td>test_nelbo</td><td>123.5</td>" in page
    assert "<td>classifier_accuracy</td><td>0.5</td><td>0.25</td>" in page
    assert "<td>animation</td><td>320</td><td>316</td><td>0.9</td>" in page
    assert "<td>baseline</td><td>10</td><td></td><td>99.5</td>" in page
    assert "train-cpu.json" in page
    for metric in ("ground_truth_iou", "effectiveness", "preservation", "reversibility_iou"):
        assert f"<td>{metric}</td>" in page
    assert "<td>composition_iou_10</td>" in page
    assert "<td>shape</td><td>scale</td><td>" in page  # the pairwise independence tests
    assert f"<td>{torch.__version__}</td>" in page
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"<td>steps</td><td>{fmt(last['step'])}</td>" in page


def test_default_location_atomic_write_and_computed_scores(
    run_dir: Path, data: DSprites, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[CausalModel, DSprites]] = []

    def evaluate(model: CausalModel, given: DSprites, seed: int = 0) -> dict[str, Any]:
        calls.append((model, given))
        return {"test_nelbo": 7.25}

    monkeypatch.setattr(report, "evaluate", evaluate)
    out = write_report(str(run_dir), data, soundness={"effectiveness": 0.5})
    assert out == run_dir / "report.html" and len(calls) == 1 and calls[0][1] is data
    page = out.read_text()
    assert (
        "<td>test_nelbo</td><td>7.25</td>" in page and "<td>effectiveness</td><td>0.5</td>" in page
    )
    assert not list(run_dir.glob(".report.html.*"))  # no temporary left behind


def test_the_shipped_run_reports_into_the_working_directory(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = load_run(run_dir)
    shipped = CausalModel(tiny.model, tiny.config, PRETRAINED_DIR)
    assert default_path(shipped) == tmp_path / "report-pretrained.html"
    assert default_path(tiny) == run_dir / "report.html"
    with pytest.raises(CausalSpritesError, match="give `out`"):
        default_path(CausalModel(tiny.model, tiny.config))


def test_missing_pieces_are_marked_not_available(
    run_dir: Path, data: DSprites, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_oracle(path: str) -> None:
        raise CausalSpritesError("oracle.json is missing")

    monkeypatch.setattr(report, "load_oracle", no_oracle)
    out = write_report(load_run(run_dir), data, tmp_path / "r.html", scores=SCORES, bench=tmp_path)
    page = out.read_text()
    assert "Not available: no oracle classifier to read counterfactuals back" in page
    assert "Not available: no bench/results/data.json" in page
    assert "Not available: no bench/results/train-*.json" in page
    assert page.count("Not available") == 3


def test_metric_tables_split_scalars_and_factors() -> None:
    scalars, factors = metric_tables(
        {
            "iou": 0.5,
            "effectiveness": 0.75,
            "per_factor": {"shape": {"iou": 0.25}, "posY": {"iou": 1.0}},
            "accuracy": {"shape": 1.0, "scale": 0.5},
            "curve": [0.123456, 1.0],
            "identified_factors": ["posX", "posY"],
            "extra": {"seconds": 3},
        },
        DSprites.schema.names,
    )
    assert scalars.rows == [
        ["effectiveness", "0.75"],
        ["curve", "[0.1235, 1.0]"],
        ["identified_factors", "posX, posY"],
        ["extra.seconds", "3"],
    ]
    assert factors is not None and factors.columns == [
        "metric",
        "shape",
        "scale",
        "posY",
        "overall",
    ]
    assert factors.rows == [["iou", "0.25", "", "1", "0.5"], ["accuracy", "1", "0.5", "", ""]]
    assert metric_tables({"a": 1.5}, DSprites.schema.names)[1] is None


def test_graph_svg_draws_arrows_for_directed_edges_only() -> None:
    edges = [
        {"from": "shape", "to": "scale", "directed": True},
        {"from": "posX", "to": "posY", "directed": False},
    ]
    svg = graph_svg(edges, "g", DSprites.schema.names)
    assert svg.count("<line") == 2 and svg.count('marker-end="url(#arrow-g)"') == 1
    assert svg.count("<ellipse") == 5 and "no edges" not in svg
    assert (
        "no edges" in graph_svg([], "h", ("a", "b"))
        and graph_svg([], "h", ("a",)).count("<ellipse") == 1
    )
