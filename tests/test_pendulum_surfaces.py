"""The pendulum on every surface: a run trained briefly on it shows its own factor names, units,
ranges and spreads in the figures, the report (beside the true counterfactual its generator
renders), the app (sliders, ranges as evidence) and the command line's text."""

from __future__ import annotations

import asyncio
import gc
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites import report
from causal_sprites.app_text import Requests, candidates_text, factor_table
from causal_sprites.config import PRESETS
from causal_sprites.continuous_scores import score_continuous_counterfactuals
from causal_sprites.data import pendulum
from causal_sprites.data.dataset import Dataset, load_dataset
from causal_sprites.figures import query_titles, traversal_rows
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit
from causal_sprites.truth import truth_of
from causal_sprites.viz import caption_key, counterfactual_figure
from tests.cli_run import run

SCHEMA = pendulum.SCHEMA
NAMES = SCHEMA.names


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[CausalModel, Dataset, Path]:
    """A pendulum run trained 20 steps on 160 images, with the true graph."""
    root = tmp_path_factory.mktemp("pendulum")
    path, _ = pendulum.write(root / "pendulum.npz", 160, progress=False)
    preset = PRESETS["images"]
    config = replace(
        preset,
        data=str(path),
        graph=pendulum.EDGES,
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(preset.train, max_steps=20, lr=1e-3, bf16=False, num_eval_images=32),
    )
    data = load_dataset(path)
    fit(root / "run", config, data, torch.device("cpu"), progress=False)
    return load_run(root / "run"), data, root / "run"


def test_titles_and_captions_carry_units_ranges_and_the_tolerance() -> None:
    assert query_titles(SCHEMA) == {
        "condition": "pendulum_angle = 20.03 ± 0.75 degrees",
        "intervene": "do(pendulum_angle = -17.32 degrees)",
        "counterfactual": "do(pendulum_angle = 20.03 degrees)",
    }
    assert caption_key(SCHEMA, 40).split("\n") == [  # lines of at most 40, no factor split
        "captions: pendulum_angle (degrees),",
        "light_angle (degrees),",
        "shadow_length (world units),",
        "shadow_position (world units)",
    ]
    texts = report.captions(SCHEMA, truth=True)
    assert texts["condition"].startswith("Conditioning on pendulum_angle = 20.03 ± 0.75 degrees")
    assert "drawn from the factor SCM" in texts["condition"] and "exact" not in texts["condition"]
    assert (
        "counterfactual | the true counterfactual (the data's generator) |"
        in texts["counterfactual"]
    )


def test_figures_show_the_truth_and_sweep_each_range(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    model, data, _ = trained
    rows = np.arange(3)
    truth = truth_of(data)
    assert truth is not None
    do = {"pendulum_angle": np.full(3, 12.5)}
    true_factors, true_images = truth.counterfactual(rows, do)
    np.testing.assert_allclose(true_factors[:, 0], 12.5)
    np.testing.assert_allclose(true_factors[:, 1], data.factors(rows)[:, 1])  # a root: kept
    answer = model.counterfactual_query(data.images(rows), data.factors(rows), do=do, seed=0)
    figure = counterfactual_figure(data.images(rows), answer.images, ["a", "b", "c"], true_images)
    titles = [ax.get_title() for ax in figure.axes[:4]]
    assert titles == ["factual", "counterfactual", "true counterfactual", "difference"]
    assert len(figure.axes) == 12
    labels = [
        label for label, _ in traversal_rows(model, data.images([0])[0], data.factors([0])[0])
    ]
    assert labels == [
        "pendulum_angle -36 to 38.7 degrees",
        "light_angle 54 to 132.3 degrees",
        "shadow_length 3 to 12.58 world units",
        "shadow_position 2.008 to 19.61 world units",
    ]


def test_the_report_shows_the_pendulum(
    trained: tuple[CausalModel, Dataset, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, run_dir = trained
    monkeypatch.setattr(report, "DISCOVERY_IMAGES", 50)  # the least PC takes
    truth = truth_of(data)
    assert truth is not None and report.soundness_kind(data) == "truth"
    soundness = score_continuous_counterfactuals(model, data, truth, num_images=4).to_json()
    page = report.write_report(
        model, data, run_dir / "report.html", scores={"test_nelbo": 1.5}, soundness=soundness
    ).read_text()
    assert (
        "pendulum: 160 colour images of 64x64 pixels (height x width); pendulum_angle (-36..38.7 "
        "degrees); light_angle (54..132.3 degrees)"
    ) in page
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', page)
    assert len(alts) == 8
    assert any(a.startswith("Intervention do(pendulum_angle = -17.32 degrees)") for a in alts)
    assert "the data records its generator's noise" in page  # scored against the truth
    assert "<td>mae_ratio</td>" in page and "ground_truth_iou" not in page  # None rows left out
    assert "<td>binned-chisq</td>" in page and page.count("SHD to the data&#39;s true graph") == 2
    assert page.count("<svg") == 2


def test_the_app_takes_ranges_shows_units_and_the_row_s_own_values(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    gr = pytest.importorskip("gradio")
    from causal_sprites.app import Explorer, build_app

    model, data, _ = trained
    requests = Requests(SCHEMA, data)
    image, labels = requests.choose("factors", ["10", "100", "5", "10"], 0, None)
    row = requests.row_of(np.array([10.0, 100.0, 5.0, 10.0]))
    np.testing.assert_array_equal(image, data.images([row])[0])
    np.testing.assert_array_equal(labels, data.factors([row])[0])  # not the sliders' values
    explorer = Explorer(model, data)
    figure, note = explorer.conditional_samples("any", "60..130", "any", "any", 4)
    assert isinstance(figure, np.ndarray) and note.startswith("Query: "), note
    figure, note = explorer.intervention_samples("12.5", "keep", "keep", "keep", 4)
    assert isinstance(figure, np.ndarray) and note.startswith("Query: ")
    _, refused = explorer.conditional_samples("30..10", "any", "any", "any", 4)
    assert refused == "**Not answered:** empty range '30..10' for pendulum_angle"
    posterior = model.infer(data.images([0]), top=2)
    text = candidates_text(posterior, 2, None, SCHEMA)
    spread = posterior.spread[0][0]
    assert f"- spread (one standard deviation): pendulum_angle ± {spread:.4g} degrees" in text
    factual = data.factors([0])[0]
    answers = explorer.counterfactuals(
        source=["dataset index"], index=[0], upload=[None],
        **{name: ["0"] for name in NAMES},
        **{f"do_{name}": ["12.5" if name == "pendulum_angle" else "keep"] for name in NAMES},
    )  # fmt: skip
    table = answers[5][0]
    assert table == factor_table(factual, answers_factors(model, data), True, SCHEMA)
    assert f"| pendulum_angle | {factual[0]:.4g} degrees | 12.5 degrees **(changed)** |" in table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        app = build_app(model, data)
        asyncio.set_event_loop(None)
        gc.collect()
    sliders = {b.elem_id: b for b in app.blocks.values() if isinstance(b, gr.Slider)}
    angle = sliders["f-pendulum_angle"]
    assert (angle.minimum, angle.maximum, angle.step) == (-36.0, pytest.approx(38.7), 0.1)
    assert angle.label == "pendulum_angle (degrees)"
    assert sliders["f-shadow_length"].label == "shadow_length (world units)"
    helps = [b.value for b in app.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("or give a range `low..high`" in str(text) for text in helps)


def answers_factors(model: CausalModel, data: Dataset) -> np.ndarray:
    """The counterfactual factors of row 0 under do(pendulum_angle = 12.5), from the API."""
    result = model.counterfactual_query(
        data.images([0]), data.factors([0]), do={"pendulum_angle": 12.5}, seed=0
    )
    return result.counterfactual[0]


def test_the_command_line_writes_values_with_units(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    _, data, run_dir = trained
    factual = data.factors([0])[0]
    out, _ = run("counterfactual", run_dir, "--index", 0, "--do", "pendulum_angle=12.5")
    assert out.startswith(f"index 0: pendulum_angle {factual[0]:.4g}->12.5 degrees")
    out, _ = run("infer", run_dir, "--index", 0, "--top", 1)
    assert re.search(r"\n  pendulum_angle: \+- [0-9.]+ degrees\n", out)
    assert re.search(r"\n  shadow_length: \+- [0-9.]+ world units\n", out)
