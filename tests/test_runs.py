"""Run directories refuse crafted files without running anything: pickles posing as weights,
configs naming classes, unknown keys, newer formats or odd paths."""

import json
import pickle
from pathlib import Path

import pytest

from causal_sprites.config import ModelConfig, RunConfig
from causal_sprites.data.factors import SCHEMA
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.runs import (
    append_metrics,
    load_model,
    read_metrics,
    save_model,
    truncate_metrics,
)

SMALL = ModelConfig(decoder_hidden=8, num_frequencies=1, encoder_channels=2, encoder_hidden=8)


class Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    config = RunConfig(model=SMALL)
    save_model(tmp_path, ConditionalVAE(SMALL, (), SCHEMA), config)
    return tmp_path


def test_a_pickle_renamed_safetensors_is_refused_without_running(run_dir: Path) -> None:
    marker = run_dir / "pwned"
    (run_dir / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CausalSpritesError, match="not a valid safetensors file"):
        load_model(run_dir)
    assert not marker.exists()


def test_truncated_weights_are_refused(run_dir: Path) -> None:
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CausalSpritesError, match="not a valid safetensors file"):
        load_model(run_dir)


def edit_config(run_dir: Path, **changes: object) -> None:
    raw = json.loads((run_dir / "config.json").read_text())
    raw.update(changes)
    (run_dir / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"decoder": "subprocess.Popen"}}, "unknown decoder 'subprocess.Popen'"),
        ({"__class__": "os.system"}, r"unknown keys \['__class__'\]"),
        ({"model": {"_target_": "os.system"}}, "unknown ModelConfig keys"),
        ({"data": "/etc/passwd"}, r"data must name a \.npz or \.hdf5 file"),
        ({"version": 99}, "newer than this causal-sprites understands"),
        ({"graph": [["shape", "shape"]]}, "cycle"),
        ({"model": "os.system"}, "ModelConfig must be a JSON object"),
    ],
)
def test_crafted_configs_are_refused(run_dir: Path, changes: dict, message: str) -> None:
    edit_config(run_dir, **changes)
    with pytest.raises(CausalSpritesError, match=message):
        load_model(run_dir)


def test_missing_pieces_are_named(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(CausalSpritesError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (run_dir / "model.safetensors").unlink()
    with pytest.raises(CausalSpritesError, match=r"model\.safetensors is missing"):
        load_model(run_dir)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(CausalSpritesError, match="not valid JSON"):
        load_model(run_dir)


def test_weights_of_another_architecture_are_refused(run_dir: Path) -> None:
    edit_config(run_dir, model={"decoder_hidden": 12})
    with pytest.raises(CausalSpritesError, match=r"does not fit config\.json"):
        load_model(run_dir)


def test_a_metrics_line_cut_by_a_crash_hides_nothing_after_it(tmp_path: Path) -> None:
    append_metrics(tmp_path, {"step": 50, "train_loss": 3.0})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 100, "train_lo')  # killed mid-line
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write("\n")
    append_metrics(tmp_path, {"step": 100, "train_loss": 2.0})  # the resumed run goes on
    assert [r["step"] for r in read_metrics(tmp_path)] == [50, 100]
    truncate_metrics(tmp_path, lambda record: True)  # what a resume rewrites: the cut line goes
    assert "train_lo\n" not in (tmp_path / "metrics.jsonl").read_text()
    assert [r["step"] for r in read_metrics(tmp_path)] == [50, 100]
