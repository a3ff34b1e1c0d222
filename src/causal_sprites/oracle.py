"""The oracle of Monteiro et al. 2023 ("Measuring axiomatic soundness of counterfactual image
models"): a factor classifier trained on real dSprites images only, apart from the VAE, with
coordinate channels (Liu et al. 2018, CoordConv) and image moments (Hu 1962) beside its convs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import SCHEMA
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import oracle_accuracy
from causal_sprites.runs import PRETRAINED_DIR, load_tensors, save_tensors_atomic, write_text_atomic

WEIGHTS_FILE: Final = "oracle.safetensors"
CONFIG_FILE: Final = "oracle.json"
_CHUNK: Final = 1024
#: Classes per factor of dSprites, the data this oracle reads.
GRID: Final = SCHEMA.sizes
#: Side of the crop around the sprite, and position classes read either side of its centre.
CROP: Final = 32
RADIUS: Final = 4


@dataclass(frozen=True)
class OracleConfig:
    """Architecture and training settings; stored beside the weights as oracle.json."""

    channels: int = 32
    hidden: int = 256
    batch_size: int = 64
    learning_rate: float = 3e-3
    steps: int = 3000
    seed: int = 0


class OracleNet(nn.Module):
    """(B, 1, 64, 64) images -> (B, 113) concatenated factor logits.

    The net looks at a 32 x 32 crop around the sprite's centroid, so its conv features are the same
    wherever the sprite is; a position is read as an offset of -4..4 classes from the crop's centre
    class. The area, the second moments and the centroid's offset from that class join the conv
    features: for symmetric shapes the offset rounds to the answer, a linear function away.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        c = channels
        local = torch.linspace(-1.0, 1.0, CROP)
        coords = torch.stack(torch.meshgrid(local, local, indexing="ij"))
        self.register_buffer("coords", coords, persistent=False)
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 4, 2, 1), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Linear(2 * c * 4 * 4 + 6, hidden),
            nn.SiLU(),
            nn.Linear(hidden, sum(GRID[:3]) + 2 * (2 * RADIUS + 1)),
        )

    def crop(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Crops (B, 1, 32, 32) around the centroids of x (B, 1, 64, 64), the position classes at
        the crops' centres (B, 2) (row, column) and features (B, 6): area, centred yy, xy, xx
        moments, and the centroid's offset (row, column) from the centre classes, in classes."""
        pixels = torch.arange(64.0, device=x.device)
        area = x.sum((-2, -1)).clamp_min(1.0)  # (B, 1)
        centroid = torch.stack([(x[:, 0].sum(-1 - i) * pixels).sum(-1) for i in (0, 1)], -1) / area
        corner = (centroid.round() - CROP // 2).clamp(0, 64 - CROP).long()  # (B, 2)
        span = torch.arange(CROP, device=x.device)
        rows, cols = corner[:, :1] + span, corner[:, 1:] + span  # (B, 32) each
        batch = torch.arange(len(x), device=x.device)[:, None, None]
        crops = x[batch, 0, rows[:, :, None], cols[:, None, :]][:, None]
        offset = (corner - centroid)[:, :, None, None]  # crop pixel i is row corner + i
        ys, xs = span[:, None] + offset[:, :1], span[None, :] + offset[:, 1:]
        second = [(crops * a * b).sum((-2, -1)) for a, b in ((ys, ys), (ys, xs), (xs, xs))]
        # The centre of position class k is pixel 15.5 + 32 k / 31 (the grid spans 32 pixels).
        per_class = CROP / (GRID[3] - 1)
        centre_class = (corner / per_class).round()  # (B, 2)
        relative = (centroid - (CROP / 2 - 0.5) - centre_class * per_class) / per_class
        features = torch.cat([area / 400.0, *[m / area / 40.0 for m in second], relative], -1)
        return crops, centre_class.long(), features

    def forward(self, x: Tensor) -> Tensor:
        crops, centre_class, moments = self.crop(x)
        coords = self.coords.expand(len(x), -1, -1, -1)  # type: ignore[operator]
        features = self.convs(torch.cat([crops, coords], dim=1)).flatten(1)
        out = self.head(torch.cat([features, moments], -1))
        direct, offsets = out.split([sum(GRID[:3]), 2 * (2 * RADIUS + 1)], -1)
        positions = []
        for axis, logits in zip((1, 0), offsets.chunk(2, -1), strict=True):  # posX: columns
            which = torch.arange(GRID[3], device=x.device) - centre_class[:, axis : axis + 1]
            inside = which.abs() <= RADIUS
            gathered = logits.gather(1, (which + RADIUS).clamp(0, 2 * RADIUS))
            positions.append(torch.where(inside, gathered, torch.full_like(gathered, -1e4)))
        return torch.cat([direct, *positions], -1)


class Oracle:
    """A trained oracle: `predict(images (B, 64, 64)) -> (B, 5)` factor classes."""

    def __init__(self, net: OracleNet, config: OracleConfig, info: dict[str, Any] | None = None):
        self.net = net.eval()
        self.config = config
        self.info = info or {}

    @torch.no_grad()
    def logits(self, images: np.ndarray | Tensor) -> list[Tensor]:
        """Per-factor logits [(B, K_i)] of 0/1 images (B, 64, 64)."""
        x = torch.as_tensor(np.asarray(images))
        if x.dim() != 3 or tuple(x.shape[1:]) != (64, 64):
            raise CausalSpritesError(f"images must have shape (B, 64, 64), got {tuple(x.shape)}")
        out = [self.net(x[s : s + _CHUNK, None].float()) for s in range(0, len(x), _CHUNK)]
        joined = torch.cat(out) if out else torch.zeros(0, sum(GRID))
        return list(torch.split(joined, list(GRID), dim=-1))

    def features(self, images: np.ndarray | Tensor) -> np.ndarray:
        """Features (B, 113) float64 for a Fréchet distance: the per-factor class probabilities,
        concatenated (the logits hold -1e4 for positions the crop does not consider)."""
        probabilities = [logits.softmax(-1) for logits in self.logits(images)]
        return torch.cat(probabilities, -1).numpy().astype(np.float64)

    def predict(self, images: np.ndarray | Tensor) -> np.ndarray:
        """Most likely factor classes (B, 5) int64 of 0/1 images (B, 64, 64)."""
        logits = self.logits(images)
        return torch.stack([lg.argmax(-1) for lg in logits], -1).numpy().astype(np.int64)

    def infer_labels(self, images: np.ndarray) -> np.ndarray:
        """Alias of `predict`, so the oracle can stand in for a run in discovery."""
        return self.predict(images)


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    parts = torch.split(logits, list(GRID), dim=-1)
    return sum((F.cross_entropy(p, labels[:, i]) for i, p in enumerate(parts)), torch.zeros(()))


def train_oracle(
    data: DSprites,
    steps: int = 3000,
    seed: int = 0,
    out_dir: Path | str | None = None,
    *,
    config: OracleConfig | None = None,
    num_eval: int = 4096,
    log_every: int = 0,
) -> Oracle:
    """Train an oracle on random batches from 98 % of the rows of `data`, measure its accuracy on
    `num_eval` of the held-out 2 %, and save it to `out_dir` (oracle.safetensors + oracle.json,
    atomically) when given. `config` (default: the defaults with `steps` and `seed`) overrides
    both; `log_every` > 0 prints the loss every that many steps."""
    config = config or OracleConfig(steps=steps, seed=seed)
    if config.steps < 1:
        raise CausalSpritesError(f"steps must be >= 1, got {config.steps}")
    torch.manual_seed(config.seed)
    net = OracleNet(config.channels, config.hidden)
    train_rows, test_rows = data.split("random", test_fraction=0.02, seed=config.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=config.steps, pct_start=0.1
    )
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    for step in range(config.steps):
        rows = np.sort(rng.choice(train_rows, config.batch_size))
        x = torch.from_numpy(data.images(rows)).float()[:, None]
        y = torch.from_numpy(data.factors(rows))
        loss = _loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    eval_rows = np.sort(rng.permutation(test_rows)[:num_eval])
    oracle = Oracle(net, config)
    scores = oracle_accuracy(
        oracle.predict(data.images(eval_rows)), data.factors(eval_rows), data.schema
    )
    oracle.info = {
        "accuracy": scores,
        "num_eval": len(eval_rows),
        "train_seconds": time.perf_counter() - start,
        "torch": torch.__version__,
    }
    if out_dir is not None:
        save_oracle(oracle, out_dir)
    return oracle


def save_oracle(oracle: Oracle, out_dir: Path | str) -> Path:
    """Write oracle.safetensors and oracle.json into `out_dir`, atomically; returns the dir."""
    out = Path(out_dir)
    state = oracle.net.state_dict()
    save_tensors_atomic(out / WEIGHTS_FILE, state, {"format": "causal-sprites-oracle"})
    text = json.dumps({"config": asdict(oracle.config), **oracle.info}, indent=2)
    write_text_atomic(out / CONFIG_FILE, text + "\n")
    return out


def load_oracle(path: Path | str = "pretrained") -> Oracle:
    """Load an oracle from a directory holding oracle.json and oracle.safetensors (`pretrained`:
    the copy shipped with the package)."""
    directory = PRETRAINED_DIR if str(path) == "pretrained" else Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CausalSpritesError(f"{config_path} is missing: not an oracle directory")
    try:
        raw = json.loads(config_path.read_text())
        config = OracleConfig(**raw["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CausalSpritesError(f"{config_path} is not a valid oracle config ({error})") from None
    net = OracleNet(config.channels, config.hidden)
    state = load_tensors(directory / WEIGHTS_FILE)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CausalSpritesError(
            f"{directory / WEIGHTS_FILE} does not fit its config: {first}"
        ) from None
    info = {k: v for k, v in raw.items() if k != "config"}
    return Oracle(net, config, info)
