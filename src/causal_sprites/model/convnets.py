"""A convolutional encoder and decoder sized from the image shape (H, W, C), 28 to 128 pixels a
side, square or not, grey or colour: the strided-convolution stacks of beta-VAE (Burgess et al.
2018, "Understanding disentangling in beta-VAE"), one stride-2 layer per halving of each side."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from causal_sprites.errors import CausalSpritesError

__all__ = ["MAX_SIDE", "MIN_SIDE", "ConvDecoder", "ConvEncoder", "halvings"]

MIN_SIDE, MAX_SIDE = 28, 128
#: Sides are halved until they are at most this many pixels (4 to 8 for sides 28 to 128).
COARSE_SIDE = 8
#: The narrowest convolution (the full-resolution ones).
MIN_WIDTH = 16


def halvings(side: int) -> int:
    """Stride-2 layers that bring `side` pixels down to at most COARSE_SIDE (halving rounds up)."""
    count = 0
    while math.ceil(side / 2**count) > COARSE_SIDE:
        count += 1
    return count


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) != 3:
        raise CausalSpritesError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
    height, width, channels = (int(n) for n in image_shape)
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE) or channels < 1:
        raise CausalSpritesError(
            f"images must be {MIN_SIDE} to {MAX_SIDE} pixels a side with at least one channel, "
            f"got (H, W, C) = ({height}, {width}, {channels})"
        )
    return height, width, channels


def _strides(height: int, width: int) -> list[tuple[int, int]]:
    """Per encoder layer, the stride of each axis: 2 while that axis still needs halving (early,
    where maps are large, so the costly layers run on fewer pixels), then 1."""
    num_h, num_w = halvings(height), halvings(width)
    return [(2 if i < num_h else 1, 2 if i < num_w else 1) for i in range(max(num_h, num_w))]


def _widths(channels: int, num_layers: int) -> list[int]:
    """Output channels per encoder layer: `channels` at the coarsest map, half as many for each
    finer one, at least MIN_WIDTH: full-resolution layers cost the most on CPU."""
    return [max(channels >> (num_layers - 1 - i), MIN_WIDTH) for i in range(num_layers)]


def _kernel(stride: tuple[int, int]) -> tuple[int, int]:
    """4 along a halved axis (with padding 1: half the side rounded down, or transposed exactly
    double), 3 along a kept one (with padding 1: the same side)."""
    return (4 if stride[0] == 2 else 3, 4 if stride[1] == 2 else 3)


class ConvTrunk(nn.Module):
    """Images (B, C, H, W) -> (B, hidden) features: stride-2 convolutions until the map is 4 to
    8 pixels a side, then a linear layer, a LayerNorm and SiLU."""

    def __init__(self, image_shape: Sequence[int], channels: int, hidden: int) -> None:
        super().__init__()
        height, width, in_channels = _check_shape(image_shape)
        strides = _strides(height, width)
        layers: list[nn.Module] = []
        for stride, out_channels in zip(strides, _widths(channels, len(strides)), strict=True):
            layers += [nn.Conv2d(in_channels, out_channels, _kernel(stride), stride, 1), nn.SiLU()]
            in_channels = out_channels
            # A halved side of n pixels has floor(n / 2) after a 4-wide kernel with padding 1.
            height, width = height // stride[0], width // stride[1]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(in_channels * height * width, hidden)
        # Bounded features: without the norm they grew to ~40, and Adam's near-sign steps on
        # every weight of z's head then moved q(z)'s loc by ~100 in one step (NaN in 3 of 8
        # seeds of tests/test_convnets.py's training run).
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.norm(self.linear(self.convs(x).flatten(1))))


class ConvEncoder(nn.Module):
    """q(z | x, y) and the classifier q(y | x) (one categorical head per factor), each on its own
    conv trunk (M2, Kingma et al. 2014, also gives q(y | x) a network of its own): on 8-bit
    images the reconstruction's gradient, thousands of nats, drowns the classifier's few nats in
    a shared trunk, whose features then carry nothing of y (q(z | x, y) is given y), and the
    classifier stayed near chance (0.5 on 4 hues after 6,000 steps, bench/own_data.py).

    Reads float images (B, C, H, W) (`PixelLikelihood.network_input`); the factors enter
    q(z | x, y) already encoded by the caller, one (B, y_dim) vector per image.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        factor_dims: Sequence[int],
        y_dim: int,
        z_dim: int,
        channels: int = 64,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.factor_dims = [int(k) for k in factor_dims]
        self.trunk = ConvTrunk(image_shape, channels, hidden)
        num_classes = sum(self.factor_dims)
        self.classifier_trunk = ConvTrunk(image_shape, channels, hidden) if num_classes else None
        self.classifier_head = nn.Linear(hidden, num_classes) if num_classes else None
        self.z_head = nn.Sequential(
            nn.Linear(hidden + y_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * z_dim)
        )

    def features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> (B, hidden) features of q(z | x, y)."""
        return self.trunk(x)

    def classify(self, x: Tensor) -> list[Tensor]:
        """q(y | x): one (B, K_i) logit tensor per categorical factor of images (B, C, H, W)."""
        if self.classifier_trunk is None or self.classifier_head is None:
            return []
        logits = self.classifier_head(self.classifier_trunk(x))
        return list(torch.split(logits, self.factor_dims, dim=-1))

    def z_params(self, features: Tensor, y_encoded: Tensor) -> tuple[Tensor, Tensor]:
        """Loc and scale (B, z_dim) of q(z | x, y) from features and encoded factors (B, y_dim)."""
        loc, raw_scale = self.z_head(torch.cat([features, y_encoded], dim=-1)).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4


def with_coordinates(maps: Tensor) -> Tensor:
    """Maps (B, C, H, W) with two more channels: each pixel's row and column in [-1, 1]."""
    rows = torch.linspace(-1.0, 1.0, maps.shape[-2], device=maps.device, dtype=maps.dtype)
    columns = torch.linspace(-1.0, 1.0, maps.shape[-1], device=maps.device, dtype=maps.dtype)
    grid = torch.stack(torch.meshgrid(rows, columns, indexing="ij"))
    return torch.cat([maps, grid.expand(len(maps), -1, -1, -1)], dim=1)


class ConvDecoder(nn.Module):
    """p(x | y, z)'s parameters (B, P * C, H, W) from encoded factors (B, y_dim) and z (B, z_dim):
    an MLP to a coarse map, transposed convolutions that mirror the encoder's, then a centre crop
    to (H, W) where a side is not a power of two times the coarse side. P is the likelihood's
    `params_per_channel`: 1 for Bernoulli logits, 2 for the discretised logistic.

    With `film`, (y, z) also scale and shift every transposed convolution's input channels
    (FiLM, Perez et al. 2018): an object's colour is then a product of its mask's features and
    the factors' code at the last layer, not something the MLP must spell into the coarse map.
    On bench/colour_fix.py's colour set (6,000 steps) the object's mean was 5 levels off with
    it and 9 without, the worst readout from pixels 0.93 against 0.85. The modulation starts
    at the identity (zero weights), so training starts from the plain decoder.

    With `coords`, every transposed convolution also reads two channels of its map's pixel
    coordinates in [-1, 1] (CoordConv, Liu et al. 2018): an object's outline at a position is
    then a function of the position, not of zero padding seen through the layers. On
    bench/own_data.py's colour set its object edges were 10-17 grey levels off in every run
    measured (3 seeds, with and without the small-change term), without it 12-30, one seed in
    three far off (BENCHMARKS.md); a step takes 1.3 % longer.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        y_dim: int,
        z_dim: int,
        channels: int = 64,
        out_channels_per_pixel: int = 1,
        hidden: int = 256,
        film: bool = False,
        coords: bool = False,
    ) -> None:
        super().__init__()
        self.height, self.width, image_channels = _check_shape(image_shape)
        strides = _strides(self.height, self.width)[::-1]
        widths = _widths(channels, len(strides))[::-1]
        self.coarse = (
            math.ceil(self.height / 2 ** halvings(self.height)),
            math.ceil(self.width / 2 ** halvings(self.width)),
        )
        self.mlp = nn.Sequential(
            nn.Linear(y_dim + z_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, widths[0] * self.coarse[0] * self.coarse[1]),
            nn.SiLU(),
        )
        outs = [*widths[1:], out_channels_per_pixel * image_channels]
        layers: list[nn.Module] = []
        for stride, in_channels, out_channels in zip(strides, widths, outs, strict=True):
            layers += [
                nn.ConvTranspose2d(
                    in_channels + 2 * coords, out_channels, _kernel(stride), stride, 1
                ),
                nn.SiLU(),
            ]
        self.convs = nn.Sequential(*layers[:-1])  # the parameters are unbounded: no last SiLU
        self.widths = widths
        self.coords = coords
        self.film: nn.Linear | None = None
        if film:
            self.film = nn.Linear(y_dim + z_dim, 2 * sum(widths))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, y_encoded: Tensor, z: Tensor) -> Tensor:
        """Likelihood parameters (B, P * C, H, W)."""
        codes = torch.cat([y_encoded, z], dim=-1)
        maps = self.mlp(codes).view(len(z), -1, *self.coarse)
        # One (scale, shift) pair per transposed convolution, in order.
        modulation = None
        if self.film is not None:
            scales, shifts = self.film(codes).chunk(2, dim=-1)
            modulation = zip(
                scales.split(self.widths, -1), shifts.split(self.widths, -1), strict=True
            )
        for layer in self.convs:
            if isinstance(layer, nn.ConvTranspose2d):
                if modulation is not None:
                    scale, shift = next(modulation)
                    maps = maps * (1 + scale[..., None, None]) + shift[..., None, None]
                if self.coords:
                    maps = with_coordinates(maps)
            maps = layer(maps)
        top = (maps.shape[-2] - self.height) // 2
        left = (maps.shape[-1] - self.width) // 2
        return maps[..., top : top + self.height, left : left + self.width]
