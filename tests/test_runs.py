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
    astray_warning,
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


def test_a_run_that_went_astray_is_told_apart_from_a_healthy_one(tmp_path: Path) -> None:
    """The last held-out NELBO against the best before it: the pendulum run that spiked mid-run
    (logged values, rounded) is warned about; a healthy run ending 1.4 % above its best is not."""
    spiked = [(500, 2324.9), (1000, 2172.2), (2000, 2017.4), (2500, 5.6e8), (4087, 3490.2)]
    healthy = [(500, 48535.7), (2500, 9000.0), (5000, 3940.5), (5106, 3993.7)]
    for name, logged in (("spiked", spiked), ("healthy", healthy)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        append_metrics(run_dir, {"step": 100, "train_nelbo": 1e9})  # no held-out value: ignored
        for step, nelbo in logged:
            append_metrics(run_dir, {"step": step, "test_nelbo": nelbo})
    warning = astray_warning(read_metrics(tmp_path / "spiked"))
    assert warning is not None and warning.startswith(
        "the held-out NELBO ended at 3490.2 nats/image, 73% above the 2017.4 it reached at step "
        "2000: training went astray"
    )
    assert astray_warning(read_metrics(tmp_path / "healthy")) is None
    assert astray_warning([{"step": 10, "test_nelbo": 5.0}]) is None  # one evaluation: no verdict
