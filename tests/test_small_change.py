"""The small-change term of training (`penalties.small_change_cost`, `--change-weight`): a change
of a grey level or two all over the image costs, a factor's real change where it shows is free
past the cap; one factor is redrawn per image; binary data refuses it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.schema import Factor, categorical
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.penalties import (
    CHANGE_CAP,
    change_rows,
    redraw_one_factor,
    small_change_cost,
)
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.optim import objective_weights
from tests.cli_run import run
from tests.test_any_images import SCHEMA, squares

LEVEL = 1 / 127.5  # one grey level on the [-1, 1] scale


def test_a_small_change_all_over_costs_and_a_large_local_one_costs_the_cap() -> None:
    mean = torch.zeros(2, 3, 8, 10)
    shifted = mean + 1.5 * LEVEL
    local = mean.clone()
    local[:, :, 2:4, 3:6] = 80 * LEVEL  # 3 x 2 x 3 sub-pixels changed a lot
    costs = small_change_cost(mean, shifted)
    torch.testing.assert_close(costs, torch.full((2,), 1.5 * 3 * 8 * 10))
    torch.testing.assert_close(small_change_cost(mean, local), torch.full((2,), 18 * CHANGE_CAP))
    other = local.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(small_change_cost(shifted, other).sum(), other)
    assert (grad[:, :, 2:4, 3:6] == 0).all()  # past the cap: free
    assert (grad[:, :, :2] != 0).all()  # the small shift elsewhere: charged


def test_one_factor_per_image_is_redrawn_within_its_values() -> None:
    factors = (
        categorical("hue", ["red", "green", "blue"]),
        Factor("angle", kind="continuous", low=-2.0, high=3.0),
        categorical("side", ["s", "m", "l", "xl"]),
    )
    y = torch.stack(
        [torch.randint(0, 3, (4000,)), torch.rand(4000) * 5 - 2, torch.randint(0, 4, (4000,))], 1
    )
    redrawn = redraw_one_factor(y, factors)
    changed = (redrawn != y).sum(1)
    assert changed.max() == 1
    assert changed.float().mean() > 0.7  # a class may be drawn again; a value almost never
    assert set(redrawn[:, 0].tolist()) == {0.0, 1.0, 2.0}
    assert set(redrawn[:, 2].tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert redrawn[:, 1].min() >= -2.0 and redrawn[:, 1].max() <= 3.0
    # Each factor is the one redrawn a third of the time; a class may come again.
    expected = (1 / 3 * 2 / 3, 1 / 3, 1 / 3 * 3 / 4)
    for column, share in enumerate(expected):
        assert abs((redrawn[:, column] != y[:, column]).float().mean() - share) < 0.03


def test_the_loss_adds_the_weighted_term_on_8_bit_images() -> None:
    preset = PRESETS["images"]
    model = ConditionalVAE(
        replace(preset.model, conv_channels=16, encoder_hidden=64), (), SCHEMA
    ).train()
    images, classes, _ = squares(1, seed=0)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).float(), torch.from_numpy(classes)
    torch.manual_seed(0)
    plain = model.loss(x, y, classifier_weight=1.0)
    torch.manual_seed(0)
    charged = model.loss(x, y, classifier_weight=1.0, change_weight=0.5)
    assert "small_change" not in plain and charged["small_change"].item() > 0
    torch.testing.assert_close(
        charged["loss"], plain["loss"] + 0.5 * charged["small_change"], rtol=1e-5, atol=1e-2
    )
    weighted = replace(preset, train=replace(preset.train, change_weight=0.02))
    assert objective_weights(weighted, 0.5)["change_weight"] == 0.02
    assert "change_weight" not in objective_weights(preset, 0.5)


def test_the_annealed_schedule_charges_the_change_only_in_the_middle_of_the_budget() -> None:
    """From 0.3 of the budget until beta-NLL starts to anneal at 0.8: not while the decoder first
    learns the factors, nor while the last fifth sharpens the edges. Without the schedule the
    term is on throughout."""
    preset = PRESETS["images"]
    weighted = replace(preset, train=replace(preset.train, change_weight=0.02))
    fractions = (0.0, 0.29, 0.3, 0.79, 0.8, 1.0)
    charged = {f: "change_weight" in objective_weights(weighted, f) for f in fractions}
    assert charged == {0.0: False, 0.29: False, 0.3: True, 0.79: True, 0.8: False, 1.0: False}
    flat = replace(weighted, train=replace(weighted.train, objective_schedule="none"))
    assert all(objective_weights(flat, f)["change_weight"] == 0.02 for f in (0.0, 0.5, 0.9))


def test_the_term_is_estimated_on_the_first_quarter_of_the_batch() -> None:
    assert [change_rows(b) for b in (64, 256, 10, 3)] == [16, 64, 4, 3]
    preset = PRESETS["images"]
    model = ConditionalVAE(
        replace(preset.model, conv_channels=16, encoder_hidden=64), (), SCHEMA
    ).train()
    images, classes, _ = squares(1, seed=0)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).float()[:16], torch.from_numpy(classes)
    other_rows = x.clone()
    other_rows[4:] = 255 - other_rows[4:]
    terms = []
    for batch in (x, other_rows):
        torch.manual_seed(0)
        terms.append(model.loss(batch, y[:16], 1.0, change_weight=0.5)["small_change"])
    assert terms[0].item() > 0
    torch.testing.assert_close(terms[0], terms[1])  # rows past the first 4 do not enter


def test_binary_images_refuse_the_term(tiny_data_file: Path, tmp_path: Path) -> None:
    default = PRESETS["default"]
    model = ConditionalVAE(default.model, default.graph, default.factor_schema)
    x = torch.zeros(4, 1, 64, 64)
    with pytest.raises(CausalSpritesError, match="8-bit"):
        model.loss(x, torch.zeros(4, 5, dtype=torch.long), 1.0, change_weight=0.1)
    out = tmp_path / "run"
    _, err = run(
        "train",
        "--out",
        out,
        "--data",
        tiny_data_file,
        "--steps",
        1,
        "--change-weight",
        0.1,
        code=1,
    )
    assert "--change-weight is for 8-bit images" in err and not out.exists()
