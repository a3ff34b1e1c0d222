"""The oracle classifier: crop geometry, a short training run, safetensors round trip, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import SIZES
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.oracle import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Oracle,
    OracleConfig,
    OracleNet,
    load_oracle,
    train_oracle,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Oracle, Path, DSprites]:
    """An oracle trained for a few steps on 512 random dSprites images, saved to a directory."""
    rng = np.random.default_rng(0)
    classes = np.stack([np.zeros(512, np.int64), *[rng.integers(0, s, 512) for s in SIZES]], -1)
    data = DSprites.from_arrays(render(classes), classes)
    out = tmp_path_factory.mktemp("oracle")
    config = OracleConfig(channels=8, hidden=32, batch_size=32, steps=30)
    return train_oracle(data, out_dir=out, config=config, num_eval=64), out, data


def test_crop_centres_the_sprite_and_its_centroid_reads_the_position() -> None:
    rng = np.random.default_rng(1)
    classes = np.stack([rng.integers(0, 2, 256), *[rng.integers(0, s, 256) for s in SIZES[1:]]], -1)
    x = torch.from_numpy(render(classes)).float()[:, None]
    crops, centre_class, features = OracleNet(8, 32).crop(x)
    assert crops.shape == (256, 1, 32, 32)
    assert torch.equal(crops.sum((1, 2, 3)), x.sum((1, 2, 3)))  # the whole sprite is inside
    # Squares and ellipses are centred on their position: the centroid rounds to it.
    read = centre_class + features[:, 4:].round().long()  # (row, column)
    np.testing.assert_array_equal(read.numpy(), classes[:, [4, 3]])


def test_position_logits_stay_near_the_crop() -> None:
    net = OracleNet(8, 32)
    image = torch.from_numpy(render(np.array([[0, 3, 0, 20, 5]]))).float()[:, None]
    logits = net(image)
    assert logits.shape == (1, sum(SIZES))
    pos_x = logits[0, sum(SIZES[:3]) : sum(SIZES[:4])]
    column = int(net.crop(image)[1][0, 1])
    assert abs(column - 20) <= 1
    inside = torch.from_numpy(np.abs(np.arange(32) - column) <= 4)
    assert (pos_x[~inside] == -1e4).all() and (pos_x[inside] > -1e4).all()


def test_training_saves_safetensors_and_json(trained: tuple[Oracle, Path, DSprites]) -> None:
    oracle, out, _ = trained
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    with open(out / WEIGHTS_FILE, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        assert json.loads(f.read(header_size))["__metadata__"]["format"] == "causal-sprites-oracle"
    info = json.loads((out / CONFIG_FILE).read_text())
    assert info["config"]["steps"] == 30 and set(info["accuracy"]) >= {"shape", "posX_within_1"}
    assert oracle.info["accuracy"] == info["accuracy"]


def test_load_reproduces_predictions(trained: tuple[Oracle, Path, DSprites]) -> None:
    oracle, out, data = trained
    images = data.images(np.arange(40))
    predicted = oracle.predict(images)
    assert predicted.shape == (40, 5) and predicted.dtype == np.int64
    assert ((predicted >= 0) & (predicted < np.array(SIZES))).all()
    again = load_oracle(out)
    np.testing.assert_array_equal(again.predict(images), predicted)
    np.testing.assert_array_equal(again.infer_labels(images), predicted)
    assert again.config == oracle.config
    assert oracle.predict(np.zeros((0, 64, 64), np.uint8)).shape == (0, 5)


def test_bad_input_fails_cleanly(trained: tuple[Oracle, Path, DSprites], tmp_path: Path) -> None:
    oracle, out, _ = trained
    with pytest.raises(CausalSpritesError, match=r"images must have shape \(B, 64, 64\)"):
        oracle.predict(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(CausalSpritesError, match="not an oracle directory"):
        load_oracle(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CausalSpritesError, match="not a valid oracle config"):
        load_oracle(tmp_path)
    bigger = json.loads((out / CONFIG_FILE).read_text())
    bigger["config"]["hidden"] = 64
    (tmp_path / CONFIG_FILE).write_text(json.dumps(bigger))
    (tmp_path / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CausalSpritesError, match="does not fit its config"):
        load_oracle(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x80\x04pickle")
    with pytest.raises(CausalSpritesError, match="not a valid safetensors file"):
        load_oracle(tmp_path)
    with pytest.raises(CausalSpritesError, match="steps must be >= 1"):
        train_oracle(trained[2], config=OracleConfig(steps=0))
