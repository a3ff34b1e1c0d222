"""Mechanisms of factors with many parent rows: where a table's cells outnumber the training rows
a network of the parents is fitted to the labels instead (before the VAE trains), the run's
config says so, and the factor graph (exact enumeration, Gumbel-max abduction, prediction)
reads it as a table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.runs import read_config
from causal_sprites.scm.graph import needs_network
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

#: 40 turns (a parent with many classes) and a band that follows the turn: band = turn // 14.
SCHEMA = Schema(
    name="bands",
    factors=(categorical("turn", range(40), cyclic=True), categorical("band", ["a", "b", "c"])),
    image_shape=(32, 32, 1),
)


def bands(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey images (N, 32, 32) whose left half's brightness is the turn and right half's the
    band, with their classes (N, 2)."""
    turns = np.random.default_rng(seed).integers(0, 40, count)
    classes = np.stack([turns, turns // 14], 1)
    images = np.zeros((count, 32, 32), np.uint8)
    images[:, :, :16] = (turns * 6)[:, None, None]
    images[:, :, 16:] = (40 + 80 * classes[:, 1])[:, None, None]
    return images, classes


def test_a_table_is_counted_unless_its_cells_outnumber_the_rows() -> None:
    assert not needs_network([], 40, 10)  # a root's table is its marginal: always counted
    assert not needs_network([3], 6, 3 * 6 * 5)
    assert needs_network([3], 6, 3 * 6 * 5 - 1)
    assert needs_network([40, 32], 3, 10_000)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[CausalModel, Path]:
    images, classes = bands(400, seed=0)
    preset = PRESETS["images"]
    config = replace(
        preset,
        graph=(("turn", "band"),),
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(preset.train, max_steps=150, bf16=False, num_eval_images=32),
    )
    out = tmp_path_factory.mktemp("bands")
    fit(out, config, Dataset(SCHEMA, images, classes.astype(float)), torch.device("cpu"), False)
    return load_run(out), out


def test_the_many_row_mechanism_is_learned_and_recorded(run: tuple[CausalModel, Path]) -> None:
    model, out = run
    assert read_config(out).model.network_mechanisms == ("band",)  # 40 x 3 x 5 > 380 rows
    table = model.factor_graph.log_tables["band"].exp()
    assert table.shape == (40, 3)
    np.testing.assert_allclose(table.sum(-1).numpy(), 1.0, atol=1e-6)
    right = table.argmax(-1).numpy() == np.arange(40) // 14
    assert right.mean() >= 0.9  # the network of the turn reads its band


def test_a_counterfactual_recomputes_the_child_through_the_learned_mechanism(
    run: tuple[CausalModel, Path],
) -> None:
    model, _ = run
    images, classes = bands(20, seed=1)
    result = model.counterfactual_query(images, classes, do={"turn": 39}, seed=0)
    assert (result.counterfactual[:, 0] == 39).all()
    assert (result.counterfactual[:, 1] == 2).mean() >= 0.9  # band c for turn 39
    kept = model.counterfactual_query(images, classes, do={"turn": classes[:, 0]}, seed=0)
    np.testing.assert_array_equal(kept.counterfactual, classes)
    np.testing.assert_array_equal(kept.images, images)
