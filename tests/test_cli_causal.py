"""CLI: data variant, discover, train-oracle (one-line errors, parseable --json)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from causal_sprites.cli import app
from causal_sprites.data.factors import FACTORS

EXAMPLES = Path(__file__).parents[1] / "examples" / "variants"
runner = CliRunner()


def test_variant_then_discover(tmp_path: Path) -> None:
    out = tmp_path / "fork.npz"
    spec = str(EXAMPLES / "fork.yaml")
    args = ["data", "variant", spec, "--out", str(out), "--num-samples", "5000"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and out.is_file()
    result = runner.invoke(app, ["discover", "--data", str(out), "--truth", spec, "--json"])
    assert result.exit_code == 0
    found = json.loads(result.stdout)
    assert found["shd"] == 0 and {"edges", "tests", "shd"} <= set(found)


def test_bad_spec_and_test_fail_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_samples: 10\nedges: [[shape, colour]]\n")
    result = runner.invoke(app, ["data", "variant", str(bad), "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "unknown factor 'colour'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_oracle(tmp_path: Path, official_file) -> None:
    out = tmp_path / "oracle"
    args = ["train-oracle", "--out", str(out), "--data", str(official_file()), "--steps", "5"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0 and "shape" in json.loads(result.stdout)["accuracy"]
    assert (out / "oracle.safetensors").is_file()


def test_discovered_graph_is_written_into_a_run(tmp_path: Path) -> None:
    from causal_sprites.runs import load_model

    data = tmp_path / "fork.npz"
    spec = str(EXAMPLES / "fork.yaml")
    sample = ["data", "variant", spec, "--out", str(data), "--num-samples", "20000"]
    assert runner.invoke(app, sample).exit_code == 0
    run = tmp_path / "run"
    train = ["train", "--out", str(run), "--data", str(data), "--preset", "tiny", "--steps", "2"]
    assert runner.invoke(app, [*train, "--no-progress", "--device", "cpu"]).exit_code == 0
    discover = ["discover", "--data", str(data), "--write-graph", str(run)]
    unoriented = runner.invoke(app, discover)
    assert unoriented.exit_code == 1 and "cannot orient" in unoriented.stderr
    oriented = runner.invoke(app, [*discover, "--orient", "shape->scale,shape->posX", "--json"])
    assert oriented.exit_code == 0, oriented.output
    assert sorted(json.loads(oriented.stdout)["written_graph"]) == [
        ["shape", "posX"],
        ["shape", "scale"],
    ]
    model, config = load_model(run)
    assert set(config.graph) == {("shape", "scale"), ("shape", "posX")}
    table = model.cpt("scale").exp()
    assert table.shape == (3, 6)
    assert (table[0] - table[2]).abs().max() > 0.1  # the fork's scale depends on shape


def test_evaluate_counterfactual_json_has_the_contract_keys(
    tiny_data_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train = ["train", "--out", str(run), "--data", str(tiny_data_file), "--preset", "tiny"]
    assert runner.invoke(app, [*train, "--steps", "2", "--no-progress"]).exit_code == 0
    args = ["evaluate", str(run), "--counterfactual", "--num-images", "64"]
    result = runner.invoke(app, [*args, "--num-counterfactuals", "4", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    for key in ("test_nelbo", "test_recon", "test_kl", "recon_iou"):
        assert scores[key] >= 0
    assert set(scores["classifier_accuracy"]) == {"shape", "scale", "orientation", "posX", "posY"}
    for key in ("ground_truth_iou", "effectiveness", "preservation", "reversibility_iou"):
        assert 0 <= scores[key] <= 1
    assert scores["composition_iou_1"] == scores["composition_iou_10"] == 1.0  # exact abduction
    assert {"tv_intervention", "tv_condition"} <= set(scores["distributions"])
    assert scores["identified_factors"] == list(FACTORS)  # plain dSprites: no descendants
    assert scores["ground_truth_iou_ceiling"] == 1.0
    plain = runner.invoke(app, [*args, "--num-counterfactuals", "4"])
    assert plain.exit_code == 0 and "ground_truth_iou" in plain.stdout
    assert "identified_factors: shape, scale, orientation, posX, posY" in plain.stdout


def test_train_takes_the_schedule_the_pixel_sample_and_the_clip_from_flags(
    tiny_data_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train = ["train", "--out", str(run), "--data", str(tiny_data_file), "--preset", "tiny"]
    flags = ["--steps", "2", "--no-progress", "--lr-schedule", "cosine", "--no-pixel-sample"]
    assert runner.invoke(app, [*train, *flags, "--grad-clip", "3"]).exit_code == 0
    stored = json.loads((run / "config.json").read_text())
    assert stored["train"]["lr_schedule"] == "cosine"
    assert stored["train"]["pixel_sample"] is False
    assert stored["train"]["grad_clip"] == 3.0
    assert stored["model"]["scale_windows"] is True and stored["version"] == 3
