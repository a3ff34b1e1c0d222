"""Plain torch networks of the conditional VAE: encoders q(z | x, y), the classifier q(y | x) and
decoders p(x | y, z).

The default decoder is a spatial-broadcast decoder (Watters et al. 2019) whose coordinate grid is
expressed in the sprite's own frame (translation, rotation and zoom read off the factor values).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError

IMAGE_SIZE = 64
#: The factors the pose decoder reads, in the column order it reads them.
POSE_FACTORS = ("shape", "scale", "orientation", "posX", "posY")


def one_hot_factors(y: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """(B, K) class indices of factors with `sizes` classes -> (B, sum(sizes)) concatenated
    one-hot codes."""
    return torch.cat([F.one_hot(y[:, i], size) for i, size in enumerate(sizes)], dim=-1).float()


def encode_factors(y: Tensor, factors: Sequence[Factor]) -> Tensor:
    """(B, K) factor values -> (B, sum of widths) codes: a categorical factor's class one-hot,
    a continuous factor's value scaled to [0, 1] by its range (what the networks read)."""
    codes = []
    for i, factor in enumerate(factors):
        if factor.kind == "categorical":
            codes.append(F.one_hot(y[:, i].long(), factor.size).float())
        else:
            assert factor.low is not None and factor.high is not None
            codes.append(((y[:, i].float() - factor.low) / (factor.high - factor.low))[:, None])
    return torch.cat(codes, dim=-1)


def split_factor_logits(logits: Tensor, sizes: tuple[int, ...]) -> list[Tensor]:
    """(B, sum(sizes)) concatenated logits -> one (B, K_i) tensor per factor."""
    return list(torch.split(logits, list(sizes), dim=-1))


class ConvTrunk(nn.Module):
    """(B, 1, 64, 64) images -> (B, hidden) features, four stride-2 convolutions.

    Weights and activations are kept channels-last, where oneDNN's convolutions (and their
    backward, a third of a training step) run faster on CPU: a step takes 15 % less time
    (bench/train_step.py). The features and the saved weights are those of the default layout."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        c = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c, c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.SiLU(),
        )  # fmt: skip
        self.use_layout(torch.channels_last)
        self.linear = nn.Linear(2 * c * 4 * 4, hidden)

    def use_layout(self, memory_format: torch.memory_format) -> None:
        """Keep the convolutions' weights and activations in `memory_format`."""
        self.memory_format = memory_format
        self.convs.to(memory_format=memory_format)  # type: ignore[call-overload]  # stubs lack it

    def forward(self, x: Tensor) -> Tensor:
        maps = self.convs(x.contiguous(memory_format=self.memory_format))
        return F.silu(self.linear(maps.flatten(1)))


class ConvEncoder(nn.Module):
    """Shared conv features feed q(y | x) (one categorical head per factor of `sizes` classes)
    and q(z | x, y)."""

    def __init__(self, z_dim: int, channels: int, hidden: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.sizes = sizes
        self.trunk = ConvTrunk(channels, hidden)
        self.classifier_head = nn.Linear(hidden, sum(sizes))
        self.z_head = nn.Sequential(
            nn.Linear(hidden + sum(sizes), hidden), nn.SiLU(), nn.Linear(hidden, 2 * z_dim)
        )

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, 64, 64) -> (B, hidden) image features shared by both heads."""
        return self.trunk(x)

    def classify(self, features: Tensor) -> Tensor:
        """Image features -> (B, sum(sizes)) concatenated factor logits."""
        return self.classifier_head(features)

    def z_params(self, features: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Loc and scale (B, z_dim) of q(z | x, y) from image features and labels (B, K)."""
        h = torch.cat([features, one_hot_factors(y, self.sizes)], dim=-1)
        loc, raw_scale = self.z_head(h).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4


class MLPEncoder(nn.Module):
    """The baseline's q(z | x, y): 4096 pixels + one-hot labels -> hidden -> hidden -> z."""

    def __init__(self, z_dim: int, hidden: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.sizes = sizes
        self.net = nn.Sequential(
            nn.Linear(IMAGE_SIZE**2 + sum(sizes), hidden), nn.Softplus(),
            nn.Linear(hidden, hidden), nn.Softplus(),
            nn.Linear(hidden, 2 * z_dim),
        )  # fmt: skip
        self.classifier_head = nn.Sequential(nn.Linear(IMAGE_SIZE**2, sum(sizes)))

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, 64, 64) -> (B, 4096): the baseline reads raw pixels."""
        return x.flatten(1)

    def classify(self, features: Tensor) -> Tensor:
        """Pixels -> (B, sum(sizes)) concatenated factor logits (a linear probe)."""
        return self.classifier_head(features)

    def z_params(self, features: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Loc and scale (B, z_dim) of q(z | x, y) from pixels and labels (B, K)."""
        codes = one_hot_factors(y, self.sizes)
        loc, log_scale = self.net(torch.cat([features, codes], -1)).chunk(2, -1)
        return loc, log_scale.clamp(-10, 10).exp()


class MLPDecoder(nn.Module):
    """The baseline's p(x | y, z): z + one-hot labels -> 3 hidden layers -> 4096 logits."""

    def __init__(self, z_dim: int, hidden: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.sizes = sizes
        self.net = nn.Sequential(
            nn.Linear(z_dim + sum(sizes), hidden), nn.Softplus(),
            nn.Linear(hidden, hidden), nn.Softplus(),
            nn.Linear(hidden, hidden), nn.Softplus(),
            nn.Linear(hidden, IMAGE_SIZE**2),
        )  # fmt: skip

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        """Pixel logits (B, 64, 64)."""
        logits = self.net(torch.cat([z, one_hot_factors(y, self.sizes)], dim=-1))
        return logits.view(-1, IMAGE_SIZE, IMAGE_SIZE)


#: The window (pixels, even) the decoder evaluates around the sprite's centre, per scale class:
#: the smallest that holds every sprite of that scale in all 737,280 dSprites images (measured,
#: 16 18 20 24 26 30) plus one pixel each side. Smaller sprites need far fewer pixels: 1.7x fewer
#: evaluated on average than one 32-pixel window for all.
SCALE_WINDOWS = (18, 20, 22, 26, 28, 32)
#: Pixels per window row that a subsampled training loss evaluates (`training_pixels`): 2.5x
#: fewer than the windows hold on average; the sprite's edge has at most 214 (scale 1, 320 kept).
PIXELS_PER_ROW = 10


def edge_pixels(x: Tensor) -> Tensor:
    """(B, H, W) bool: pixels of binary images x (B, H, W) whose 3 x 3 neighbourhood holds both
    colours (a separable dilation against an erosion; 20x faster than max_pool2d on CPU)."""
    padded = F.pad(x[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0].bool()
    rows_any = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
    rows_all = padded[:, :-2] & padded[:, 1:-1] & padded[:, 2:]
    grown = rows_any[:, :, :-2] | rows_any[:, :, 1:-1] | rows_any[:, :, 2:]
    shrunk = rows_all[:, :, :-2] & rows_all[:, :, 1:-1] & rows_all[:, :, 2:]
    return grown & ~shrunk


def pose_draws(schema: Schema) -> bool:
    """Whether the pose decoder draws a dataset's images: dSprites' factors on 64x64 images,
    shape a class, the others classes or continuous values in the grid's unit (a variant)."""
    return (
        schema.names == POSE_FACTORS
        and schema.image_shape == (IMAGE_SIZE, IMAGE_SIZE, 1)
        and schema.factors[0].kind == "categorical"
    )


class PoseDecoder(nn.Module):
    """p(x | y, z) as an implicit shape function evaluated in the sprite's frame.

    Each pixel centre is moved into the sprite's frame: minus the position centre
    (16 + 32 pos px), turned back by the orientation, divided by the scale. A per-pixel MLP of
    those coordinates (plus Fourier features), biased per image by the shape and z, gives the
    logit. The MLP runs on a window around the centre (sprites never reach further): `window`
    pixels square, or with `scale_windows` the window of the sprite's scale (SCALE_WINDOWS, at
    most `window`); the rest of the canvas gets one learned background logit. The factors'
    grids (scale, orientation, position values) come from the dSprites schema given; where the
    schema makes scale, orientation or a position continuous (a continuous variant of dSprites),
    its column holds the value itself, in the grid's unit.
    """

    scales: Tensor
    angles: Tensor
    positions: Tensor
    frequencies: Tensor
    windows: Tensor

    def __init__(
        self,
        schema: Schema,
        z_dim: int,
        hidden: int,
        num_layers: int,
        num_frequencies: int,
        window: int,
        scale_windows: bool = False,
    ) -> None:
        super().__init__()
        if not pose_draws(schema):
            raise CausalSpritesError(
                f"the pose decoder draws dSprites (64x64 images of {', '.join(POSE_FACTORS)}, "
                f"shape a class); dataset {schema.name!r} needs another decoder"
            )
        self.continuous = tuple(f.kind == "continuous" for f in schema.factors)
        grid = {
            f.name: (f.values or tuple(range(f.size))) if f.kind == "categorical" else ()
            for f in schema.factors
        }
        self.num_shapes = len(grid["shape"])
        sizes = [min(w, window) if scale_windows else window for w in SCALE_WINDOWS]
        if self.continuous[1]:  # one window, the largest scale's
            sizes = sizes[-1:]
        self.register_buffer("windows", torch.tensor(sizes), persistent=False)
        self.register_buffer("scales", torch.tensor(grid["scale"], dtype=torch.float32))
        self.register_buffer("angles", torch.tensor(grid["orientation"], dtype=torch.float32))
        positions = grid["posX"] or grid["posY"]
        self.register_buffer("positions", torch.tensor(positions, dtype=torch.float32))
        self.register_buffer("frequencies", (2.0 ** torch.arange(num_frequencies)) * math.pi / 16)
        num_features = 2 + 4 * num_frequencies
        self.coordinate_layer = nn.Linear(num_features, hidden)
        self.image_bias = nn.Linear(self.num_shapes + z_dim, hidden)
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers, nn.SiLU(), nn.Linear(hidden, 1))
        self.background_logit = nn.Parameter(torch.tensor(-8.0))

    def window_pixels(self, y: Tensor, window: int) -> tuple[Tensor, Tensor]:
        """Canvas rows and columns (B, window**2) of each image's window around its centre."""
        centre = 16 + 32 * self.position_values(y)
        origin = (centre.floor().long() - window // 2).clamp(0, IMAGE_SIZE - window)
        offsets = torch.arange(window, device=y.device)
        shape = (len(y), window, window)
        rows = (origin[:, 1, None, None] + offsets[None, :, None]).expand(shape)
        cols = (origin[:, 0, None, None] + offsets[None, None, :]).expand(shape)
        return rows.reshape(len(y), -1), cols.reshape(len(y), -1)

    def window_groups(self, y: Tensor) -> Iterator[tuple[int, Tensor, Tensor, Tensor, Tensor]]:
        """Images grouped by window size: (window, the images (b,), their window's canvas rows
        and columns (b, window**2), and those pixels' places in the flat batch canvas)."""
        sizes = self.windows[self.scale_classes(y)]
        for window in sizes.unique().tolist():
            chosen = (sizes == window).nonzero().squeeze(1)
            rows, cols = self.window_pixels(y[chosen], window)
            yield (
                window,
                chosen,
                rows,
                cols,
                chosen[:, None] * IMAGE_SIZE**2 + rows * IMAGE_SIZE + cols,
            )

    def value(self, y: Tensor, column: int, grid: Tensor) -> Tensor:
        """(B,) the factor in `column` in its unit: its class's grid value, or the value itself
        where the factor is continuous."""
        if self.continuous[column]:
            return y[:, column].float()
        return grid[y[:, column].long()]

    def position_values(self, y: Tensor) -> Tensor:
        """(B, 2) posX and posY in [0, 1]."""
        return torch.stack([self.value(y, 3, self.positions), self.value(y, 4, self.positions)], 1)

    def scale_classes(self, y: Tensor) -> Tensor:
        """(B,) each image's index into `windows`: its scale class, or 0 (the one window) where
        scale is continuous."""
        if self.continuous[1]:
            return torch.zeros(len(y), dtype=torch.long, device=y.device)
        return y[:, 1].long()

    def sprite_coordinates(self, y: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """(B, P, 2) coordinates (u, v) in the sprite frame of pixel centres (B, P)."""
        scale = self.value(y, 1, self.scales)[:, None]
        angle = self.value(y, 2, self.angles)[:, None]
        centre = 16 + 32 * self.position_values(y)
        dx = cols + 0.5 - centre[:, 0:1]
        dy = rows + 0.5 - centre[:, 1:2]
        cos, sin = angle.cos(), angle.sin()
        return torch.stack([dx * cos - dy * sin, dx * sin + dy * cos], dim=-1) / scale[..., None]

    def features(self, uv: Tensor) -> Tensor:
        """(..., 2) -> (..., 2 + 4F) scaled coordinates and their Fourier features."""
        phases = (uv[..., None] * self.frequencies).flatten(-2)
        return torch.cat([uv / 16, phases.sin(), phases.cos()], dim=-1)

    def first_layer(self, features: Tensor, bias: Tensor) -> Tensor:
        """Hidden units (B * P, H) of pixel features (B, P, F) with per-image biases (B, H): the
        coordinate layer as one fused batched product."""
        weight = self.coordinate_layer.weight.t().to(features.dtype)
        start = (bias[:, None, :] + self.coordinate_layer.bias).to(features.dtype)
        hidden = torch.baddbmm(start, features, weight.expand(len(features), -1, -1))
        return hidden.reshape(-1, hidden.shape[-1])

    def pixel_mlp(self, hidden: Tensor) -> Tensor:
        """Logits (N,) of every pixel's first-layer units (N, H), all windows in one pass; the
        activations in place when no gradient is needed (the pass is memory-bound on CPU: this
        doubles inference speed)."""
        in_place = not torch.is_grad_enabled()
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                hidden = F.linear(hidden, layer.weight, layer.bias)
            else:
                hidden = F.silu(hidden, inplace=in_place)
        return hidden.view(-1)

    def forward(self, y: Tensor, z: Tensor, keep: Tensor | None = None) -> Tensor:
        """Pixel logits (B, 64, 64): the MLP on each image's window (images grouped by window
        size), one scatter onto the background. With `keep` (B, 64, 64) bool from
        `training_pixels`, the MLP runs only on the kept pixels (the same number in every window
        of a size); the others get the background logit."""
        batch = len(y)
        shapes = F.one_hot(y[:, 0].long(), self.num_shapes).float()
        bias = self.image_bias(torch.cat([shapes, z], dim=-1))
        places, hidden = [], []
        for _, chosen, rows, cols, place in self.window_groups(y):
            uv = self.sprite_coordinates(y[chosen], rows.float(), cols.float())
            if keep is not None:
                kept = keep.reshape(-1)[place]
                place, uv = place[kept].view(len(chosen), -1), uv[kept].view(len(chosen), -1, 2)
            hidden.append(self.first_layer(self.features(uv), bias[chosen]))
            places.append(place.reshape(-1))
        logits = self.pixel_mlp(torch.cat(hidden)).float()
        canvas = self.background_logit.expand(batch * IMAGE_SIZE**2)
        canvas = canvas.scatter(0, torch.cat(places), logits)
        return canvas.view(batch, IMAGE_SIZE, IMAGE_SIZE)

    def training_pixels(self, x: Tensor, y: Tensor, uniform: Tensor) -> Tensor | None:
        """Weights (B, 64, 64) of an unbiased subsampled reconstruction term, or None to use all.

        In each window: every pixel at the sprite's edge (its 3 x 3 neighbourhood is not all one
        colour), weight 1, and a uniform sample of the others (drawn with `uniform` (B, W, W), W
        the largest window), weighted by the inverse of their inclusion probability, 10 pixels
        per window row in all (Horvitz-Thompson: the weighted sum's expectation is the full
        log-likelihood). Pixels outside the windows are the cheap background: all kept. A batch
        with an image whose edge alone fills its sample (not seen in dSprites) is not
        subsampled."""
        edge = edge_pixels(x.reshape(-1, IMAGE_SIZE, IMAGE_SIZE) > 0.5).reshape(-1)
        weights = torch.ones(len(y) * IMAGE_SIZE**2, device=x.device)
        for window, chosen, _, _, place in self.window_groups(y):
            on_edge = edge[place]
            count, num_edge = PIXELS_PER_ROW * window, on_edge.sum(1, keepdim=True)
            if count >= window**2:
                continue
            if (num_edge >= count).any():
                return None
            draws = uniform.reshape(len(y), -1)[chosen, : window**2]
            priority = on_edge + draws  # edge pixels first, then at random
            taken = torch.zeros_like(on_edge).scatter(1, priority.topk(count, dim=1).indices, True)
            rest_weight = (window**2 - num_edge) / (count - num_edge)
            inside = torch.where(on_edge, 1.0, rest_weight) * taken
            weights[place.reshape(-1)] = inside.reshape(-1).float()
        return weights.view(-1, IMAGE_SIZE, IMAGE_SIZE)
