"""The web UI and the report in a real browser: Playwright driving Debian's Chromium (headless).

The app runs as `causal-sprites app` runs it (a child process on a free loopback port). Set
CAUSAL_SPRITES_SCREENSHOTS=DIR to keep the screenshots there too (e.g. docs/ for the README).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.render import render
from causal_sprites.report import SECTIONS, write_report
from causal_sprites.scm.queries import CausalModel

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is missing: `make test` installs Debian's chromium when run as root",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("gradio")
from causal_sprites.app import SEED  # noqa: E402
from causal_sprites.app_text import value_text  # noqa: E402
from tests.app_server import running  # noqa: E402

#: Chromium's flags on these machines: no sandbox (root), no GPU, and no calls home (the network
#: is closed, so background requests would only fail and slow the start).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The app's default factor controls: a square, scale 5, orientation 0, in the middle.
DEFAULT = np.array([[0, 5, 0, 16, 16]])
UPLOADED = np.array([[2, 3, 10, 20, 12]])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, shared by the tests of this module."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1440, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def screenshot(page: Any, path: Path) -> None:
    """Save a full-page screenshot, and copy it to $CAUSAL_SPRITES_SCREENSHOTS when set."""
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("CAUSAL_SPRITES_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def shown_image(page: Any, selector: str) -> np.ndarray:
    """The pixels of the PNG an <img> shows, fetched from its src."""
    src = page.locator(f"{selector} img").get_attribute("src")
    body = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)))


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_counterfactual_upload_and_bad_upload_in_the_page(
    browser: Any, run_path: str, model: CausalModel, tmp_path: Path
) -> None:
    expect = sync_api.expect
    with running(run_path) as url:
        page = browser.new_page()
        page.goto(url)
        page.locator("#do-shape input").click()
        page.get_by_role("option", name="heart", exact=True).click()
        page.locator("#run").click()
        expect(page.locator("#factors")).to_contain_text("heart (2) (changed)")
        expect(page.locator("#counterfactual img")).to_be_visible()
        api = model.counterfactual(render(DEFAULT), DEFAULT, {"shape": "heart"}, seed=SEED)
        assert np.array_equal(shown_image(page, "#counterfactual"), api[0] * 255)
        assert np.array_equal(shown_image(page, "#original"), render(DEFAULT)[0] * 255)
        expect(page.locator("#latency")).to_contain_text("Counterfactual query:")
        screenshot(page, tmp_path / "app.png")

        sprite = render(UPLOADED)
        page.locator("#upload input[type=file]").set_input_files(
            write_png(tmp_path / "sprite.png", sprite[0] * 255)
        )
        expect(page.locator("#source input[value=upload]")).to_be_checked()
        page.locator("#run").click()
        table = page.locator("#factors")
        expect(table).to_contain_text("posterior mode")
        inferred = model.infer_labels(sprite)[0]
        rows = table.locator("tbody tr")
        for i, name in enumerate(DSprites.schema.names):
            cells = rows.nth(i).locator("td")
            expect(cells.nth(0)).to_have_text(name)
            expect(cells.nth(1)).to_have_text(value_text(name, int(inferred[i]), DSprites.schema))
        cf = model.counterfactual(sprite, None, {"shape": "heart"}, seed=SEED)
        assert np.array_equal(shown_image(page, "#counterfactual"), cf[0] * 255)

        page.locator("#upload").get_by_label("Remove Image").click()
        page.locator("#upload input[type=file]").set_input_files(
            write_png(tmp_path / "bad.png", np.full((40, 50), 128))
        )
        page.locator("#run").click()
        expect(page.locator("#status")).to_contain_text(
            "Not answered: the upload is 40x50 pixels (height x width); expected 64x64"
        )
        page.close()


def test_report_renders_every_section_and_image(
    browser: Any, model: CausalModel, tmp_path: Path
) -> None:
    grid = np.meshgrid([0, 1, 2], [2, 5], [0, 5], [0, 10, 31], [0, 20, 31], indexing="ij")
    classes = np.stack([g.reshape(-1) for g in grid], 1)
    data = DSprites.from_arrays(render(classes), classes)
    fidelity = {"animation": {"num_images": 320, "exact_matches": 316}}
    (tmp_path / "data.json").write_text(json.dumps({"fidelity": fidelity}))
    (tmp_path / "train-cpu.json").write_text(json.dumps({"results": [{"preset": "baseline"}]}))
    out = write_report(
        model, data, tmp_path / "report.html", scores={"test_nelbo": 1.5}, bench=tmp_path
    )
    page = browser.new_page()
    page.goto(out.as_uri())
    expect = sync_api.expect
    for section, title in SECTIONS:
        expect(page.locator(f"section#{section} h2")).to_be_visible()
        expect(page.locator(f"nav a[href='#{section}']")).to_have_text(title)
    images = page.locator("img")
    assert images.count() >= 8
    for k in range(images.count()):
        images.nth(k).scroll_into_view_if_needed()
        assert images.nth(k).evaluate("i => i.complete && i.naturalWidth > 0")
    expect(page.locator("section#discovery svg")).to_have_count(2)
    expect(page.locator(".missing")).to_have_count(0)
    screenshot(page, tmp_path / "report.png")
    page.close()
