"""The web UI on your own images, without a browser: a colour run's app answers with the data's
factor names and class names, draws its images in colour at their own size, reads uploads of that
size and refuses others (and data of another schema) in one line."""

from __future__ import annotations

import asyncio
import gc
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import Dataset, load_dataset, write_dataset
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit
from tests.cli_run import run
from tests.test_any_images import SCHEMA, squares

gr = pytest.importorskip("gradio")
from causal_sprites.app import SEED, Explorer, build_app  # noqa: E402
from causal_sprites.app_text import upload_pixels  # noqa: E402

NAMES = ("hue", "side", "left")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[CausalModel, Dataset, Path]:
    """A run trained 30 steps on every combination of the squares three times over."""
    root = tmp_path_factory.mktemp("app")
    images, classes, _ = squares(3, seed=0)
    write_dataset(root / "squares.npz", images, classes, SCHEMA)
    data = load_dataset(root / "squares.npz")
    preset = PRESETS["images"]
    config = replace(
        preset,
        data=str(root / "squares.npz"),
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(preset.train, max_steps=30, bf16=False, num_eval_images=32),
    )
    fit(root / "run", config, data, torch.device("cpu"), progress=False)
    return load_run(root / "run"), data, root / "run"


def request(**fields: object) -> dict[str, object]:
    """One request's inputs by name, with defaults: the image of red, 6, 6 and no do()."""
    row: dict[str, object] = {"source": "factors", "hue": "red", "side": "6", "left": "6"}
    row.update({"index": 0, "upload": None, **{f"do_{name}": "keep" for name in NAMES}})
    row.update(fields)
    return row


def answer(explorer: Explorer, *rows: dict[str, object]) -> list[dict[str, object]]:
    """Run the batched handler on requests; one dict of outputs per request."""
    out = explorer.counterfactuals(**{key: [row[key] for row in rows] for key in rows[0]})
    names = ("original", "reconstruction", "counterfactual", "difference", "pixel_probability")
    names = (*names, "table", "latency", "status")
    return [dict(zip(names, values, strict=True)) for values in zip(*out, strict=True)]


def test_counterfactuals_answer_in_colour_with_the_data_s_names(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    model, data, _ = trained
    explorer = Explorer(model, data)
    by_factors, by_index = answer(
        explorer,
        request(hue="green", side="14", left="36", do_hue="blue"),
        request(source="dataset index", index=5, do_left="36"),
    )
    classes = np.array([[1, 2, 3], data.factors([5])[0]]).astype(np.int64)
    row = int(np.flatnonzero((data.factors(slice(None)) == classes[0]).all(1))[0])
    images = data.images([row, 5])
    np.testing.assert_array_equal(by_factors["original"], images[0])  # the data's first such image
    np.testing.assert_array_equal(by_index["original"], images[1])
    expected = model.counterfactual_query(images[:1], classes[:1], {"hue": "blue"}, seed=SEED)
    np.testing.assert_array_equal(by_factors["counterfactual"], expected.images[0])
    alone = model.counterfactual_query(images[1:], classes[1:], {"left": 3}, seed=SEED)
    np.testing.assert_array_equal(by_index["counterfactual"], alone.images[0])
    recon = model.reconstruct(images, classes)  # one batch, as the app reconstructs them
    np.testing.assert_array_equal(by_factors["reconstruction"], recon[0])
    for out in (by_factors, by_index):
        assert isinstance(out["counterfactual"], np.ndarray)
        assert out["counterfactual"].shape == (32, 48, 3) and out["status"] == ""
        assert out["pixel_probability"] is None  # a distribution only for dSprites' binary model
        assert isinstance(out["difference"], np.ndarray) and out["difference"].shape == (32, 48, 3)
    table = str(by_factors["table"])
    assert "| hue | green (1) | blue (2) **(changed)** |" in table
    assert "| side | 14 (2) | 14 (2) |" in table and "| left | 36 (3) | 36 (3) |" in table
    assert "| left | " in str(by_index["table"]) and "36 (3) **(changed)**" in str(
        by_index["table"]
    )


def test_uploads_are_read_at_the_data_s_size_and_bad_requests_get_a_message(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    model, data, _ = trained
    explorer = Explorer(model, data)
    picture = data.images([7])[0]
    rgba = np.concatenate([picture, np.full((32, 48, 1), 255, np.uint8)], -1)
    read, small, value, empty = answer(
        explorer,
        request(source="upload", upload=rgba, do_side="10"),
        request(source="upload", upload=np.zeros((28, 28, 3), np.uint8)),
        request(do_hue="purple"),
        request(source="upload"),
    )
    table = str(read["table"])
    assert "factual (posterior mode)" in table and "Read off the pixels, p(y | x)" in table
    mode = model.infer_labels(picture[None])[0]
    hue = SCHEMA.factor("hue").classes[mode[0]]
    assert f"| hue | {hue} ({mode[0]}) |" in table
    np.testing.assert_array_equal(read["original"], picture)  # the opaque alpha channel dropped
    size = "the upload is 28x28 pixels (height x width); expected 32x48 (squares's images)"
    assert size in str(small["status"])
    assert "bad value 'purple' for hue" in str(value["status"]) and "upload a PNG first" in str(
        empty["status"]
    )
    subset = Dataset(SCHEMA, data.images(np.arange(30)), data.factors(np.arange(30)))
    (missing,) = answer(Explorer(model, subset), request(hue="blue", side="14", left="36"))
    assert "no image with hue=blue (2), side=14 (2), left=36 (3) in the data" in str(
        missing["status"]
    )
    with pytest.raises(CausalSpritesError, match="the app of a run on squares needs its data"):
        Explorer(model)


def test_upload_pixels_keep_the_data_s_mode() -> None:
    grey = Schema("grey", SCHEMA.factors, (32, 48, 1))
    picture = np.arange(32 * 48, dtype=np.uint8).reshape(32, 48)
    np.testing.assert_array_equal(upload_pixels(np.stack([picture] * 3, -1), grey), picture)
    refusal = r"the upload is in colour \(mode RGB\); grey's images are grey"
    with pytest.raises(CausalSpritesError, match=refusal):
        tinted = np.zeros((32, 48, 3), np.uint8)
        tinted[..., 2] = 9
        upload_pixels(tinted, grey)
    colour = upload_pixels(picture, SCHEMA)
    assert colour.shape == (32, 48, 3) and (colour[..., 2] == picture).all()
    binary = Schema("binary", (categorical("a", [0, 1]),), (30, 30, 1), binary=True)
    assert upload_pixels(np.eye(30, dtype=np.uint8) * 255, binary).max() == 1
    with pytest.raises(CausalSpritesError, match="not binary: it has 3 gray levels"):
        upload_pixels(np.eye(30, dtype=np.uint8) * 255 + np.eye(30, k=1, dtype=np.uint8), binary)


def test_sampling_tabs_take_the_data_s_class_names(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    model, data, _ = trained
    explorer = Explorer(model, data)
    figure, note = explorer.intervention_samples("green", "keep", "keep", 6)
    assert isinstance(figure, np.ndarray) and figure.ndim == 3 and note.startswith("Query: ")
    assert explorer.intervention_samples("keep", "keep", "keep", 6)[0] is None
    figure, note = explorer.conditional_samples("any", "14", "any", 6)
    assert isinstance(figure, np.ndarray) and note.startswith("Query: ")


def test_the_page_has_the_data_s_menus_and_a_colour_upload(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    model, data, _ = trained
    with warnings.catch_warnings():
        # Gradio opens an event loop for each lock it makes and leaves them open: drop them here.
        warnings.simplefilter("ignore", ResourceWarning)
        app = build_app(model, data)
        asyncio.set_event_loop(None)
        gc.collect()
    menus = {b.elem_id: b for b in app.blocks.values() if isinstance(b, gr.Dropdown)}
    assert {"f-hue", "f-side", "f-left", "do-hue", "do-side", "do-left"} <= set(menus)
    assert [c[0] for c in menus["do-hue"].choices] == ["keep", "red", "green", "blue"]
    assert menus["f-left"].value == "6" and "f-shape" not in menus
    uploads = [
        b for b in app.blocks.values() if isinstance(b, gr.Image) and b.interactive is not False
    ]
    assert [(b.type, b.image_mode) for b in uploads] == [("pil", None)]  # as uploaded
    hidden = [b.elem_id for b in app.blocks.values() if isinstance(b, gr.Image) and not b.visible]
    assert hidden == ["pixel-probability"]


def test_the_app_refuses_data_of_another_schema_in_one_line(
    trained: tuple[CausalModel, Dataset, Path],
) -> None:
    _, _, run_dir = trained
    _, err = run("app", "pretrained", "--data", run_dir.parent / "squares.npz", code=1)
    assert "is not what run pretrained was trained on" in err
