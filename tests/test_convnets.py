"""The general conv encoder and decoder: shapes for any image size, gradients, bad shapes, and a
short training run on a tiny colour dataset that must draw each factor combination."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.convnets import ConvDecoder, ConvEncoder
from causal_sprites.model.pixels import DiscretisedLogistic, bits_per_dim

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


def test_gradients_reach_every_parameter() -> None:
    shape = (32, 48, 3)
    encoder = ConvEncoder(shape, FACTOR_DIMS, Y_DIM, Z_DIM, channels=16, hidden=32)
    decoder = ConvDecoder(shape, Y_DIM, Z_DIM, 16, 2, hidden=32)
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
