"""The general conv encoder and decoder: shapes for any image size, gradients, bad shapes, FiLM,
CoordConv, the images preset's annealed objective, and short training runs on a tiny colour
dataset that must draw each factor combination."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from causal_sprites.config import PRESETS
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.convnets import ConvDecoder, ConvEncoder, with_coordinates
from causal_sprites.model.pixels import DiscretisedLogistic, bits_per_dim
from causal_sprites.optim import budget_fraction, objective_weights

LOGISTIC = DiscretisedLogistic()
FACTOR_DIMS = [3, 4]
Y_DIM, Z_DIM = 7, 5


def encode_factors(y: torch.Tensor) -> torch.Tensor:
    """(B, 2) classes -> (B, 7) concatenated one-hot codes."""
    return torch.cat([F.one_hot(y[:, i], k) for i, k in enumerate(FACTOR_DIMS)], -1).float()


@pytest.mark.parametrize(
    "shape", [(28, 28, 1), (32, 48, 3), (64, 64, 3), (96, 96, 3), (128, 128, 1)]
)
def test_output_shapes(shape: tuple[int, int, int]) -> None:
    height, width, channels = shape
    encoder = ConvEncoder(shape, FACTOR_DIMS, Y_DIM, Z_DIM, channels=16, hidden=32)
    x = torch.rand(2, channels, height, width)
    maps = encoder.trunk.convs(x)
    assert all(4 <= side <= 8 for side in maps.shape[-2:])
    features = encoder.features(x)
    assert features.shape == (2, 32)
    assert [tuple(t.shape) for t in encoder.classify(x)] == [(2, 3), (2, 4)]
    loc, scale = encoder.z_params(features, encode_factors(torch.tensor([[0, 1], [2, 3]])))
    assert loc.shape == scale.shape == (2, Z_DIM) and (scale > 0).all()
    for per_pixel in (1, 2):
        decoder = ConvDecoder(shape, Y_DIM, Z_DIM, 16, per_pixel, hidden=32)
        params = decoder(torch.zeros(2, Y_DIM), torch.zeros(2, Z_DIM))
        assert params.shape == (2, per_pixel * channels, height, width)


@pytest.mark.parametrize(
    ("height", "width"), [(29, 127), (31, 97), (33, 65), (45, 63), (65, 33), (127, 28)]
)
def test_odd_and_uneven_sides(height: int, width: int) -> None:
    """Each side is halved until it is 4 to 8 pixels; the decoder crops back to (H, W)."""
    encoder = ConvEncoder((height, width, 3), FACTOR_DIMS, Y_DIM, Z_DIM, channels=16, hidden=32)
    maps = encoder.trunk.convs(torch.rand(1, 3, height, width))
    assert all(4 <= side <= 8 for side in maps.shape[-2:])
    decoder = ConvDecoder((height, width, 3), Y_DIM, Z_DIM, 16, 2, hidden=32)
    assert decoder(torch.zeros(1, Y_DIM), torch.zeros(1, Z_DIM)).shape == (1, 6, height, width)


@pytest.mark.parametrize("coords", [False, True])
def test_gradients_reach_every_parameter(coords: bool) -> None:
    shape = (32, 48, 3)
    encoder = ConvEncoder(shape, FACTOR_DIMS, Y_DIM, Z_DIM, channels=16, hidden=32)
    decoder = ConvDecoder(shape, Y_DIM, Z_DIM, 16, 2, hidden=32, coords=coords)
    x = torch.randint(0, 256, (4, 3, 32, 48), dtype=torch.uint8)
    y = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 3]])
    features = encoder.features(LOGISTIC.network_input(x))
    loc, scale = encoder.z_params(features, encode_factors(y))
    params = decoder(encode_factors(y), loc + scale * torch.randn_like(loc))
    logits = encoder.classify(LOGISTIC.network_input(x))
    loss = -LOGISTIC.log_prob(params, x).mean() + sum(
        F.cross_entropy(lg, y[:, i]) for i, lg in enumerate(logits)
    )
    loss.backward()
    for module in (encoder, decoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_film_starts_as_the_plain_decoder_and_keeps_its_weights() -> None:
    """FiLM's modulation starts at the identity, so a FiLM decoder begins as the plain one; the
    plain decoder's parameters keep their names (runs saved before FiLM load unchanged)."""
    shape = (32, 48, 3)
    torch.manual_seed(0)
    plain = ConvDecoder(shape, Y_DIM, Z_DIM, 16, 2, hidden=32)
    torch.manual_seed(0)
    film = ConvDecoder(shape, Y_DIM, Z_DIM, 16, 2, hidden=32, film=True)
    y, z = encode_factors(torch.tensor([[0, 1], [2, 3]])), torch.randn(2, Z_DIM)
    assert torch.equal(plain(y, z), film(y, z))
    extra = set(film.state_dict()) - set(plain.state_dict())
    assert extra == {"film.weight", "film.bias"}
    assert film.film is not None and film.film.out_features == 2 * sum(film.widths)
    film.load_state_dict({**plain.state_dict(), **{k: film.state_dict()[k] for k in extra}})


def test_film_scales_and_shifts_each_layer_by_the_code() -> None:
    """A code that sets every layer's scale to -1 zeroes each transposed convolution's input,
    so the output is the last layer's bias alone; a zero code leaves the plain decoder."""
    shape = (32, 48, 3)
    decoder = ConvDecoder(shape, Y_DIM, Z_DIM, 16, 2, hidden=32, film=True)
    assert decoder.film is not None
    with torch.no_grad():
        decoder.film.bias[: sum(decoder.widths)] = -1.0
    params = decoder(torch.zeros(1, Y_DIM), torch.zeros(1, Z_DIM))
    last = [m for m in decoder.convs if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    assert last.bias is not None
    assert torch.allclose(params[0], last.bias[:, None, None].expand_as(params[0]))


def test_coordinate_channels_hold_each_pixels_row_and_column() -> None:
    maps = torch.randn(2, 5, 4, 7)
    out = with_coordinates(maps)
    assert out.shape == (2, 7, 4, 7) and torch.equal(out[:, :5], maps)
    rows, columns = out[1, 5], out[1, 6]
    assert torch.equal(rows[:, 0], torch.linspace(-1, 1, 4)) and (rows == rows[:, :1]).all()
    assert torch.equal(columns[0], torch.linspace(-1, 1, 7)) and (columns == columns[:1]).all()


def test_a_coordconv_decoder_draws_position_from_the_coordinates_alone() -> None:
    """With every layer's features zeroed by FiLM (as above), the plain decoder's output is its
    last bias everywhere; the CoordConv decoder's still varies with position: each transposed
    convolution reads the coordinates besides the features."""
    shape = (32, 48, 3)
    torch.manual_seed(0)
    decoder = ConvDecoder(shape, Y_DIM, Z_DIM, 16, 2, hidden=32, film=True, coords=True)
    assert decoder.film is not None
    with torch.no_grad():
        decoder.film.bias[: sum(decoder.widths)] = -1.0
    params = decoder(torch.zeros(1, Y_DIM), torch.zeros(1, Z_DIM))
    assert params.shape == (1, 6, 32, 48)
    assert params[0, 0].std() > 1e-3 and params[0, 0, 0].std() > 1e-3  # across rows and columns
    first = next(m for m in decoder.convs if isinstance(m, torch.nn.ConvTranspose2d))
    assert first.in_channels == decoder.widths[0] + 2


@pytest.mark.parametrize("shape", [(27, 64, 3), (64, 129, 1), (64, 64, 0), (64, 64)])
def test_bad_image_shapes_fail_cleanly(shape: tuple[int, ...]) -> None:
    with pytest.raises(CausalSpritesError):
        ConvEncoder(shape, FACTOR_DIMS, Y_DIM, Z_DIM)
    with pytest.raises(CausalSpritesError):
        ConvDecoder(shape, Y_DIM, Z_DIM)


COLOURS = torch.tensor([[200, 40, 40], [40, 180, 60], [50, 70, 220]], dtype=torch.uint8)
BACKGROUNDS = (100, 120, 140, 160)  # a nuisance left to z, so that y must carry the square


def square_corner(position: int) -> tuple[int, int]:
    """Top-left pixel of the 12 x 12 square at one of 4 positions on a 32 x 48 canvas."""
    return 4 + 12 * (position // 2), 6 + 24 * (position % 2)


def colour_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """48 images (48, 3, 32, 48) uint8: 3 colours x 4 positions x 4 grey backgrounds, and
    their (colour, position) classes (48, 2)."""
    images, classes = [], []
    for background in BACKGROUNDS:
        for colour in range(3):
            for position in range(4):
                image = torch.full((3, 32, 48), background, dtype=torch.uint8)
                top, left = square_corner(position)
                image[:, top : top + 12, left : left + 12] = COLOURS[colour][:, None, None]
                images.append(image)
                classes.append((colour, position))
    return torch.stack(images), torch.tensor(classes)


@pytest.mark.slow
def test_a_short_run_draws_each_colour_at_its_position() -> None:
    """600 Adam steps (batches of 16) on the NELBO's beta-NLL gradient: the true NELBO falls
    from about 9 to 3.3-5.5 bits/dim, and the decoder's mode for each (colour, position) at
    z = 0 draws that colour at that position: square MAE at most 15 of 255, background channels
    within 4 of grey (seeds 0-9, one thread). A wrong colour or no square is 67 or more off."""
    x, y = colour_squares()
    y_encoded = encode_factors(y)
    encoder = ConvEncoder((32, 48, 3), FACTOR_DIMS, Y_DIM, 2, channels=32, hidden=128)
    decoder = ConvDecoder((32, 48, 3), Y_DIM, 2, 32, 2, hidden=128)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)

    def nelbo_terms(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = encoder.features(LOGISTIC.network_input(x[index]))
        loc, scale = encoder.z_params(features, y_encoded[index])
        params = decoder(y_encoded[index], loc + scale * torch.randn_like(loc))
        return params, (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)

    def nelbo_bits_per_dim() -> float:
        with torch.no_grad():
            params, kl = nelbo_terms(torch.arange(len(x)))
            return bits_per_dim(float((kl - LOGISTIC.log_prob(params, x)).mean()), 32 * 48 * 3)

    start = nelbo_bits_per_dim()
    for _ in range(600):
        index = torch.randperm(len(x))[:16]
        params, kl = nelbo_terms(index)
        loss = (kl - LOGISTIC.training_log_prob(params, x[index], beta=1.0)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = nelbo_bits_per_dim()
    assert start > 8.5 and end < 7.0

    with torch.no_grad():
        drawn = LOGISTIC.mode(decoder(y_encoded[:12], torch.zeros(12, 2))).float()
    for (colour, position), image in zip(y[:12].tolist(), drawn, strict=True):
        for place in range(4):
            top, left = square_corner(place)
            patch = image[:, top + 2 : top + 10, left + 2 : left + 10].reshape(3, -1)
            if place == position:
                assert (patch - COLOURS[colour][:, None]).abs().mean() < 35
            else:  # grey background (channels equal, within the range drawn), no square
                assert (patch - patch.mean(0)).abs().mean() < 15


def test_film_decoder_draws_each_colour_from_y() -> None:
    """The decoder alone, y and the background's grey as its code, 300 Adam steps of the
    likelihood's beta-NLL gradient: with FiLM the mode draws every square in its own colour
    (worst square 13-22 of 255 off in seeds 0-5); the plain decoder, the same steps, left some
    square 35-148 off in each of those seeds (bench/colour_fix.py measured the same at full
    size: one grey whatever the hue)."""
    torch.manual_seed(0)
    x, y = colour_squares()
    code = torch.cat([encode_factors(y), (x[:, :1, 0, 0].float() - 130) / 30], dim=-1)
    decoder = ConvDecoder((32, 48, 3), Y_DIM, 1, 16, 2, hidden=64, film=True)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(300):
        index = torch.randperm(len(x))[:16]
        params = decoder(code[index, :Y_DIM], code[index, Y_DIM:])
        loss = -LOGISTIC.training_log_prob(params, x[index], beta=1.0).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        drawn = LOGISTIC.mode(decoder(code[:, :Y_DIM], code[:, Y_DIM:])).float()
    for (colour, position), image in zip(y.tolist(), drawn, strict=True):
        top, left = square_corner(position)
        patch = image[:, top + 2 : top + 10, left + 2 : left + 10].reshape(3, -1)
        assert (patch - COLOURS[colour][:, None]).abs().mean() < 30


def test_the_annealed_objective_ends_on_the_elbo() -> None:
    """The images preset's schedule: KL weight 8 at the start, 1 from half the budget on; the
    beta-NLL weighting whole until the last fifth, then down to 0, so the last step's objective is
    the plain NELBO that evaluation reports. Without a schedule the loss keeps its defaults."""
    images = PRESETS["images"]
    assert objective_weights(images, 0.0).pop("independence_weight") == 1e4
    images = replace(images, train=replace(images.train, independence_weight=0.0))
    assert objective_weights(images, 0.0) == {"kl_weight": 8.0, "beta": 1.0}
    assert objective_weights(images, 0.25) == {"kl_weight": 4.5, "beta": 1.0}
    assert objective_weights(images, 0.5) == {"kl_weight": 1.0, "beta": 1.0}
    assert objective_weights(images, 0.9) == pytest.approx({"kl_weight": 1.0, "beta": 0.5})
    assert objective_weights(images, 1.0) == {"kl_weight": 1.0, "beta": 0.0}
    assert objective_weights(images, 1.7) == {"kl_weight": 1.0, "beta": 0.0}
    assert objective_weights(PRESETS["default"], 0.0) == {}


def test_the_budget_fraction_is_the_larger_of_steps_and_minutes() -> None:
    images = PRESETS["images"]
    timed = replace(images, train=replace(images.train, max_minutes=10.0, max_steps=1000))
    assert budget_fraction(timed, 100, 1000, 300.0) == 0.5
    assert budget_fraction(timed, 800, 1000, 60.0) == 0.8
    assert budget_fraction(timed, 2000, 1000, 0.0) == 1.0
    assert budget_fraction(images, 5, None, 99.0) == 0.0
