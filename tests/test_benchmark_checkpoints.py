"""The proxies' rank correlation across the checkpoints of one training: values on constructed
results (a proxy ordering the checkpoints as the truth does gives 1, reversed -1, too few
checkpoints or a constant column null with the reason), the grouping of runs into trainings, the
snapshot hook (training unchanged, snapshots loadable) and the whole through `run_benchmark`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from causal_sprites.benchmark_checkpoints import (
    SNAPSHOT_FILE,
    Snapshots,
    across_checkpoints,
    checkpoint_series,
    checkpoints_html,
    checkpoints_markdown,
    describe_run,
    run_step,
    snapshot_dir,
)
from causal_sprites.config import ModelConfig, RunConfig, TrainConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import NUM_IMAGES, index_to_classes
from causal_sprites.data.render import render
from causal_sprites.runs import load_tensors
from causal_sprites.scm.queries import load_run
from causal_sprites.train import fit

PROXIES = ("effectiveness", "composition_1", "reversibility", "realism_fd")
TINY = RunConfig(
    model=ModelConfig(decoder_hidden=16, num_frequencies=2, encoder_channels=4, encoder_hidden=16),
    train=TrainConfig(
        batch_size=16, eval_every=4, checkpoint_every=4, num_eval_images=32, bf16=False
    ),
)
CPU = torch.device("cpu")


def entry(name: str, kind: str = "run", status: str = "ok", **metrics: float) -> dict[str, Any]:
    return {"name": name, "kind": kind, "status": status, "metrics": metrics}


def stub(runs: Mapping[str, tuple[str, int | None]]) -> Any:
    """A `describe` that knows the runs' (config, step) without directories."""
    return runs.get


def test_correlation_values_and_reasons() -> None:
    truth = [0.2, 0.5, 0.7, 0.9]
    models = [entry("oracle", "the truth", truth_iou=1.0, effectiveness=1.0)]
    models += [
        entry(f"s{i}", truth_iou=t, effectiveness=t / 2, composition_1=0.8, reversibility=1 - t)
        for i, t in enumerate(truth)
    ]
    models += [entry("other-a", truth_iou=0.3, effectiveness=0.1)]
    models += [entry("other-b", truth_iou=0.6, effectiveness=0.2)]
    models += [entry("s-failed", status="failed")]
    runs = {f"s{i}": ("A", 100 * (4 - i)) for i in range(4)} | {"s-failed": ("A", 50)}
    runs |= {"other-a": ("B", 1), "other-b": ("B", 2)}
    found = across_checkpoints(models, "truth_iou", PROXIES, stub(runs))
    assert len(found) == 2
    first, second = found
    # Ordered by step; the failed checkpoint listed, not scored.
    assert [c["name"] for c in first["checkpoints"]] == ["s-failed", "s3", "s2", "s1", "s0"]
    assert [c["step"] for c in first["checkpoints"]] == [50, 100, 200, 300, 400]
    assert first["checkpoints"][1]["truth_iou"] == 0.9 and first["checkpoints"][0]["status"] == (
        "failed"
    )
    assert first["rho"]["effectiveness"] == pytest.approx(1.0)
    assert first["rho"]["reversibility"] == pytest.approx(-1.0)
    assert first["rho"]["composition_1"] is None
    assert first["why_null"]["composition_1"] == "composition_1 is the same at every checkpoint"
    assert first["rho"]["realism_fd"] is None
    assert "0 of 5 checkpoints" in first["why_null"]["realism_fd"]
    assert set(first["why_null"]) == {"composition_1", "realism_fd"}
    # Two checkpoints: no rank correlation, said why.
    assert [c["name"] for c in second["checkpoints"]] == ["other-a", "other-b"]
    assert second["rho"] == dict.fromkeys(PROXIES)
    assert second["why_null"]["effectiveness"] == (
        "2 of 2 checkpoints scored with effectiveness and truth_iou; a rank correlation needs at "
        "least 3"
    )


def test_ties_and_partial_order() -> None:
    pairs = [(0.1, 0.3), (0.2, 0.3), (0.3, 0.9), (0.4, 0.8)]
    models = [entry(f"r{i}", truth_iou=t, effectiveness=e) for i, (t, e) in enumerate(pairs)]
    runs = stub({f"r{i}": ("A", i) for i in range(4)})
    found = across_checkpoints(models, "truth_iou", ("effectiveness",), runs)
    ranks = [1.5, 1.5, 4.0, 3.0]  # the tie shares its mean rank
    expected = np.corrcoef(ranks, [1, 2, 3, 4])[0, 1]
    assert found[0]["rho"]["effectiveness"] == pytest.approx(expected)
    constant_truth = [entry(f"r{i}", truth_iou=0.5, effectiveness=i / 4) for i in range(3)]
    flat = across_checkpoints(constant_truth, "truth_iou", ("effectiveness",), runs)
    assert flat[0]["why_null"]["effectiveness"] == "truth_iou is the same at every checkpoint"


def test_grouping_skips_single_runs_other_kinds_and_subsets() -> None:
    models = [
        entry("alone"),
        entry("resample", "final resample"),
        entry("a"),
        entry("b"),
        {**entry("c"), "subset": True},
        entry("nostep"),
    ]
    runs: dict[str, tuple[str, int | None]] = {"alone": ("X", 5), "resample": ("A", 1)}
    runs |= {"a": ("A", 9), "b": ("A", 3), "c": ("A", 4), "nostep": ("A", None)}
    series = checkpoint_series(models, stub(runs))
    assert [[(e["name"], s) for e, s in g] for g in series] == [
        [("b", 3), ("a", 9), ("nostep", None)]
    ]
    assert across_checkpoints([entry("oracle", "truth")], "truth_iou", PROXIES, stub({})) == []


def test_markdown_and_html() -> None:
    models = [entry(f"s{i}", truth_iou=t, effectiveness=t) for i, t in enumerate([0.1, 0.5, 0.9])]
    runs = stub({f"s{i}": ("A", 10 * (i + 1)) for i in range(3)})
    series = across_checkpoints(models, "truth_iou", ("effectiveness", "realism_fd"), runs)
    result = {"proxies_across_checkpoints": series}
    text = checkpoints_markdown(result)
    assert "(s0, s1, s2; steps 10, 20, 30)" in text
    assert "| effectiveness | 1.000 |  |" in text
    assert "| realism_fd |  | 0 of 3 checkpoints" in text
    page = checkpoints_html(result)
    assert page.startswith("<h2>") and "<td>1.000</td>" in page
    assert checkpoints_markdown({"proxies_across_checkpoints": []}) == ""
    assert checkpoints_html({}) == ""


def test_snapshot_hook_fires_once_per_time_limit(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}\n")
    hook = Snapshots(run_dir, seconds=[0.0, 0.0, 1e9])
    model: Any = torch.nn.Linear(2, 2)
    for step in (1, 2, 3):
        hook(step, model)
    assert [(s, d.name) for s, _, d in hook.taken] == [(1, "run-step000001")]
    assert json.loads((snapshot_dir(run_dir, 1) / SNAPSHOT_FILE).read_text())["step"] == 1
    assert (snapshot_dir(run_dir, 1) / "config.json").read_text() == "{}\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny run trained 8 steps with snapshots at steps 3, 5 and 8, and the same without."""
    rows = np.sort(np.random.default_rng(0).choice(NUM_IMAGES, 400, replace=False))
    classes = index_to_classes(rows)
    data = DSprites.from_arrays(render(classes), classes)
    config = replace(TINY, train=replace(TINY.train, max_steps=8))
    root = tmp_path_factory.mktemp("checkpoints")
    hook = Snapshots(root / "run", steps=[3, 5, 8])
    fit(root / "run", config, data, CPU, progress=False, on_step=hook)
    fit(root / "plain", config, data, CPU, progress=False)
    return {"run": root / "run", "plain": root / "plain"} | {
        f"step{s}": d for s, _, d in hook.taken
    }


def test_snapshots_leave_training_unchanged_and_load(trained: dict[str, Path]) -> None:
    final, plain = (load_tensors(trained[n] / "model.safetensors") for n in ("run", "plain"))
    at_end = load_tensors(trained["step8"] / "model.safetensors")
    early = load_tensors(trained["step3"] / "model.safetensors")
    assert final.keys() == plain.keys() == at_end.keys()
    assert all(torch.equal(final[k], plain[k]) and torch.equal(final[k], at_end[k]) for k in final)
    assert not all(torch.equal(final[k], early[k]) for k in final)
    assert run_step(trained["step3"]) == 3 and run_step(trained["run"]) == 8
    config = (trained["run"] / "config.json").read_text()
    assert describe_run(str(trained["step5"])) == (config, 5)
    assert describe_run(str(trained["run"] / "missing")) is None
    run = load_run(trained["step5"])
    assert run.config.train.max_steps == 8


def test_through_the_benchmark(trained: dict[str, Path], tmp_path: Path) -> None:
    from causal_sprites.benchmark import run_benchmark, write_outputs
    from causal_sprites.benchmark_contenders import load_contenders
    from causal_sprites.benchmark_queries import draw_queries
    from causal_sprites.benchmark_truth import known_data

    known = known_data("dsprites")
    runs = [str(trained[n]) for n in ("run", "step5", "step3")]
    names = ["oracle", "identity", *runs]
    contenders = load_contenders(names, known.schema, known.truth, CPU)
    result, _ = run_benchmark(known, contenders, draw_queries(known.data, 8, seed=0), seed=0)
    (series,) = result["proxies_across_checkpoints"]
    assert [c["step"] for c in series["checkpoints"]] == [3, 5, 8]
    assert [c["name"] for c in series["checkpoints"]] == runs[::-1]
    assert set(series["rho"]) >= {"effectiveness", "reversibility", "realism_fd"}
    for proxy, rho in series["rho"].items():
        assert (rho is not None and -1.0 <= rho <= 1.0) or proxy in series["why_null"]
    write_outputs(tmp_path, result)
    page = (tmp_path / "benchmark.md").read_text()
    assert "Across the checkpoints of one training" in page and "steps 3, 5, 8" in page
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["proxies_across_checkpoints"][0]["checkpoints"][0]["step"] == 3
