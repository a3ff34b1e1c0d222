"""The web UI's handlers without a browser: batched counterfactuals equal the API's answers,
uploads are checked, the sampling tabs draw, and the server binds to loopback only."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import urllib.request
import warnings

import numpy as np
import pytest
from PIL import Image

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.queries import CausalModel

gr = pytest.importorskip("gradio")
from causal_sprites.app import SEED, Explorer, binary_upload, build_app  # noqa: E402
from tests.app_server import running  # noqa: E402

KEEP5 = ["keep"] * 5


def request(**fields: object) -> dict[str, object]:
    """One request's inputs with defaults: the square of the app's factor controls, no do()."""
    row: dict[str, object] = {
        "source": "factors",
        "shape": "square",
        "scale": 5,
        "orientation": 0,
        "posX": 16,
        "posY": 16,
        "index": 0,
        "upload": None,
        **{f"do_{name}": "keep" for name in DSprites.schema.names},
    }
    row.update(fields)
    return row


def answer(explorer: Explorer, *rows: dict[str, object]) -> list[dict[str, object]]:
    """Run the batched handler on requests; one dict of outputs per request."""
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    out = explorer.counterfactuals(**columns)
    names = ("original", "reconstruction", "counterfactual", "difference", "pixel_probability")
    names = (*names, "table", "latency")
    return [dict(zip((*names, "status"), values, strict=True)) for values in zip(*out, strict=True)]


def test_binary_upload_accepts_black_and_white_64x64_only() -> None:
    sprite = render(np.array([[2, 3, 10, 20, 12]]))[0]
    assert np.array_equal(binary_upload(sprite * 255), sprite)
    assert np.array_equal(binary_upload(sprite), sprite)
    assert np.array_equal(binary_upload(np.repeat(sprite[..., None] * 255, 3, -1)), sprite)
    size = r"the upload is 48x32 pixels \(height x width\); expected 64x64"
    with pytest.raises(CausalSpritesError, match=size):
        binary_upload(np.zeros((48, 32), np.uint8))
    gray = sprite * 255
    gray[0, :3] = (40, 90, 200)
    with pytest.raises(CausalSpritesError, match="5 gray levels; expected black and white"):
        binary_upload(gray)


def test_batched_counterfactuals_equal_the_api_answers(model: CausalModel) -> None:
    explorer = Explorer(model)  # images from the generator: any factor tuple
    classes = np.array([[0, 5, 0, 16, 16], [1, 5, 10, 8, 31]])
    rows = [
        request(do_shape="heart"),
        request(shape="ellipse", orientation=10, posX=8, posY=31, do_shape="heart"),
        request(source="dataset index", index=7, do_shape="ellipse", do_scale="0"),
    ]
    out = answer(explorer, *rows)
    images = render(classes)
    paired = model.counterfactual_query(images, classes, {"shape": "heart"}, seed=SEED)
    index_image = render(np.array([[0, 0, 0, 0, 0, 7]]))
    alone = model.counterfactual(
        index_image, [[0, 0, 0, 0, 7]], {"shape": 1, "scale": 0}, seed=SEED
    )
    for k in range(2):
        assert np.array_equal(out[k]["original"], images[k] * 255)
        assert np.array_equal(out[k]["counterfactual"], paired.images[k] * 255)
        reconstruction = model.reconstruct(images, classes)[k]
        assert np.array_equal(out[k]["reconstruction"], reconstruction * 255)
        assert "| shape | " in str(out[k]["table"]) and "heart (2) **(changed)**" in str(
            out[k]["table"]
        )
        assert "a batch of 2" in str(out[k]["latency"]) and out[k]["status"] == ""
    assert np.array_equal(out[2]["counterfactual"], alone[0] * 255)
    difference = out[2]["difference"]
    assert isinstance(difference, np.ndarray) and difference.shape == (64, 64, 3)
    assert difference.dtype == np.uint8
    assert "| scale | 0 | 0 |" in str(out[2]["table"])  # index 7: scale 0 already


def test_images_come_from_the_data_when_given(model: CausalModel, subset_data: DSprites) -> None:
    explorer = Explorer(model, subset_data)
    by_index, by_factors, missing = answer(
        explorer,
        request(source="dataset index", index=7, do_shape="heart"),
        request(shape="ellipse", scale=5, orientation=10, posX=8, posY=31, do_shape="heart"),
        request(posX=3, do_shape="heart"),
    )
    assert np.array_equal(by_index["original"], subset_data.images([7])[0] * 255)
    row = subset_data.index(shape=1, scale=5, orientation=10, posX=8, posY=31)
    assert np.array_equal(by_factors["original"], subset_data.images([row])[0] * 255)
    assert "no image with shape=0, scale=5, orientation=0, posX=3, posY=16" in str(
        missing["status"]
    )


def test_uploads_take_the_classifiers_labels_and_bad_input_gets_a_message(
    model: CausalModel,
) -> None:
    explorer = Explorer(model)
    sprite = render(np.array([[2, 3, 10, 20, 12]]))
    gray = sprite[0] * 200 + 20
    out = answer(
        explorer,
        request(source="upload", upload=sprite[0] * 255, do_posX="3"),
        request(source="upload", upload=gray, do_posX="3"),
        request(source="upload", do_posX="3"),
        request(source="dataset index", index=10**7),
    )
    inferred = model.infer_labels(sprite)[0]
    table = str(out[0]["table"])
    assert "factual (posterior mode)" in table and "Read off the pixels, p(y | x)" in table
    for name, value in zip(DSprites.schema.names[1:], inferred[1:], strict=True):
        assert f"| {name} | {value} |" in table
    cf = model.counterfactual(sprite, None, {"posX": 3}, seed=SEED)
    assert np.array_equal(out[0]["counterfactual"], cf[0] * 255)
    messages = [str(row["status"]) for row in out[1:]]
    assert "2 gray levels; expected black and white" in messages[0]
    assert "upload a PNG first" in messages[1]
    assert "the index must lie in 0..737279" in messages[2]
    assert all(row["counterfactual"] is None for row in out[1:])


def test_sampling_tabs_draw_figures(model: CausalModel) -> None:
    explorer = Explorer(model)
    figure, note = explorer.intervention_samples("heart", *KEEP5[1:], 8)
    assert isinstance(figure, np.ndarray) and figure.ndim == 3 and note.startswith("Query: ")
    assert explorer.intervention_samples(*KEEP5, 8) == (
        None,
        "Choose a value for at least one factor.",
    )
    figure, note = explorer.conditional_samples("any", "5", "any", "any", "any", 8)
    assert isinstance(figure, np.ndarray) and note.startswith("Query: ")


def served_counterfactual(url: str, inputs: list[object]) -> np.ndarray:
    """Ask a running app's counterfactual endpoint over HTTP; the counterfactual PNG's pixels."""
    post = urllib.request.Request(
        url + "gradio_api/call/counterfactual",
        data=json.dumps({"data": inputs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(post, timeout=60) as response:
        event = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/counterfactual/{event}", timeout=60) as s:
        stream = s.read().decode()
    outputs = json.loads(stream.split("event: complete\ndata:", 1)[1].strip())
    with urllib.request.urlopen(outputs[2]["url"], timeout=60) as image:
        return np.asarray(Image.open(io.BytesIO(image.read())))


def test_the_served_app_answers_over_http_as_the_api_does(
    model: CausalModel, run_path: str
) -> None:
    with running(run_path) as url:
        assert url.startswith("http://127.0.0.1:")
        shown = served_counterfactual(url, list(request(do_shape="heart").values()))
    sprite = render(np.array([[0, 5, 0, 16, 16]]))
    cf = model.counterfactual(sprite, [[0, 5, 0, 16, 16]], {"shape": "heart"}, seed=SEED)
    assert np.array_equal(shown, cf[0] * 255)


def test_the_page_takes_no_file_system_paths(model: CausalModel) -> None:
    with warnings.catch_warnings():
        # Gradio opens an event loop for each lock it makes and leaves them open: drop them here.
        warnings.simplefilter("ignore", ResourceWarning)
        app = build_app(model)
        asyncio.set_event_loop(None)
        gc.collect()
    kinds = {type(block).__name__ for block in app.blocks.values()}
    assert not kinds & {"File", "FileExplorer", "Textbox", "UploadButton", "Code"}
    uploads = [
        b for b in app.blocks.values() if isinstance(b, gr.Image) and b.interactive is not False
    ]
    assert [b.type for b in uploads] == ["pil"]  # an image in memory, never a path
