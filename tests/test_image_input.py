"""Pictures given to a run (`--image`, app uploads): only what keeps the picture is converted
(grey to colour, colour with equal channels to grey, an opaque alpha channel dropped); a
transparent pixel, colour for a grey run, a mode that is not 8-bit grey or colour and another
size are refused in one line naming the file and the mode. Sizes read height x width everywhere;
a class that is not the factor's names its classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.pictures import read_png, run_pixels, size_text
from causal_sprites.data.render import render
from causal_sprites.data.schema import Schema, categorical
from causal_sprites.errors import CausalSpritesError
from tests.cli_run import run
from tests.test_any_images import SCHEMA as SQUARES

#: A grey 32x48 schema and a picture of it with 20 gray levels.
GREY = Schema("grey", SQUARES.factors, (32, 48, 1))
PICTURE = (np.arange(32 * 48).reshape(32, 48) % 20 * 12).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Write pixels as a PNG in `mode` (default: Pillow's for the array)."""
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path)
    return path


def test_conversions_that_keep_the_picture(tmp_path: Path) -> None:
    colour = np.stack([PICTURE, 255 - PICTURE, PICTURE // 2], -1)
    # Grey to a colour run: the same grey in each channel.
    as_colour = read_png(save(tmp_path / "grey.png", PICTURE), SQUARES)
    assert as_colour.shape == (32, 48, 3) and (as_colour == PICTURE[..., None]).all()
    # Colour whose channels are equal to a grey run: the grey itself.
    equal = save(tmp_path / "equal.png", np.repeat(PICTURE[..., None], 3, -1))
    np.testing.assert_array_equal(read_png(equal, GREY), PICTURE)
    # A fully opaque alpha channel is dropped, for colour (RGBA) and grey (LA) alike.
    opaque = save(tmp_path / "opaque.png", colour, "RGBA")
    np.testing.assert_array_equal(read_png(opaque, SQUARES), colour)
    np.testing.assert_array_equal(read_png(save(tmp_path / "la.png", PICTURE, "LA"), GREY), PICTURE)
    # A palette picture is read as its colours; a 1-bit one as black and white.
    palette = save(tmp_path / "palette.png", colour, "P")
    with Image.open(palette) as image:
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(read_png(palette, SQUARES), expected)
    sprite = render(np.array([[2, 3, 10, 20, 12]]))[0]
    one_bit = save(tmp_path / "sprite.png", sprite * 255, "1")
    np.testing.assert_array_equal(read_png(one_bit, DSprites.schema), sprite)


def test_what_would_change_the_picture_is_refused_naming_file_and_mode(tmp_path: Path) -> None:
    clear = np.dstack([np.repeat(PICTURE[..., None], 3, -1), np.full((32, 48), 255, np.uint8)])
    clear[0, 0, 3] = 0
    path = save(tmp_path / "clear.png", clear)
    with pytest.raises(CausalSpritesError) as caught:
        read_png(path, SQUARES)
    assert str(caught.value) == (
        f"{path} has transparent pixels (mode RGBA): save it without an alpha channel"
    )
    with pytest.raises(CausalSpritesError, match=r"transparent pixels \(mode LA\)"):
        read_png(save(tmp_path / "clear_la.png", clear[..., [0, 3]]), GREY)
    tinted = np.repeat(PICTURE[..., None], 3, -1)
    tinted[5, 5, 2] += 1
    path = save(tmp_path / "tinted.png", tinted)
    with pytest.raises(CausalSpritesError, match=rf"^{path} is in colour \(mode RGB\); grey's"):
        read_png(path, GREY)
    deep = tmp_path / "deep.png"
    Image.fromarray(PICTURE.astype(np.uint16) * 256).save(deep)
    with pytest.raises(CausalSpritesError, match="has mode I;16: save it as 8-bit grey"):
        read_png(deep, GREY)
    turned = save(tmp_path / "turned.png", PICTURE.T.copy())
    size = rf"^{turned} is 48x32 pixels \(height x width\); expected 32x48 \(squares's images\)$"
    with pytest.raises(CausalSpritesError, match=size):
        read_png(turned, SQUARES)
    with pytest.raises(CausalSpritesError, match="the upload is not a picture"):
        run_pixels(np.zeros((32, 48, 5), np.uint8), SQUARES, "the upload")


def test_the_cli_refuses_colour_for_a_black_and_white_run(tmp_path: Path) -> None:
    sprite = render(np.array([[0, 5, 0, 16, 16]]))[0] * 255
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = sprite
    path = save(tmp_path / "red.png", red)
    _, err = run("infer", "pretrained", "--image", path, code=1)
    assert err == f"error: {path} is in colour (mode RGB); dSprites's images are black and white\n"
    grey_rgb = save(tmp_path / "white.png", np.repeat(sprite[..., None], 3, -1))
    out, _ = run("infer", "pretrained", "--image", grey_rgb, "--top", 1)
    assert "shape=square, scale=5, orientation=" in out and "posX=16, posY=16" in out
    help_text = " ".join(run("infer", "--help")[0].replace("│", " ").split())
    assert "a grey picture is taken as colour" in help_text  # the help says what is converted


def test_sizes_and_classes_read_the_same_way_everywhere() -> None:
    assert size_text(32, 48) == "32x48 pixels (height x width)"
    refusals = [
        (lambda: SQUARES.parse_value("side", "7"), "value 7 for side is neither a class (6, 10, "
         "14) nor a class index 0..2"),
        (lambda: categorical("angle", [f"{0.5 * k:g}" for k in range(40)]).parse("41"),
         "value 41 for angle is neither a class (0, 0.5, 1, 1.5, 2, ..., 19.5 (40 classes)) nor "
         "a class index 0..39"),
        # Classes that are their own indices: the range says it all.
        (lambda: DSprites.schema.parse_value("scale", "9"),
         "value 9 for scale is out of range 0..5"),
    ]  # fmt: skip
    for call, message in refusals:
        with pytest.raises(CausalSpritesError) as caught:
            call()
        assert str(caught.value) == message
