"""An oracle for any dataset with known factors: a conv net (`convnets.ConvTrunk`) trained on the
dataset's own training rows to read its factors (logits per categorical factor, a value per
continuous one), apart from every model it scores. `benchmark` reads counterfactuals with it
where dSprites' oracle cannot (the pendulum, continuous variants, imported sets); it is trained
once per dataset file and kept in the data directory under the file's hash."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from causal_sprites.benchmark_queries import SPLIT_SEED, TEST_FRACTION
from causal_sprites.data.dataset import random_split
from causal_sprites.data.official import data_dir
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.convnets import ConvTrunk
from causal_sprites.progress import progress_bar
from causal_sprites.runs import load_tensors, save_tensors_atomic, write_text_atomic

WEIGHTS_FILE: Final = "oracle.safetensors"
INFO_FILE: Final = "oracle.json"
_CHUNK: Final = 512
#: Held-out rows the oracle's own error is measured on.
NUM_EVAL: Final = 1024


@dataclass(frozen=True)
class DataOracleConfig:
    """Architecture and training settings; part of the cache key and stored in oracle.json."""

    channels: int = 32
    hidden: int = 256
    batch_size: int = 64
    learning_rate: float = 2e-3
    steps: int = 3000
    seed: int = 0
    #: Share of each batch rendered by the data's generator (where one is known) under a random
    #: do() of one factor: factors moved apart from their causes, so the oracle cannot read one
    #: off another (trained on observational images only, the pendulum's oracle read a shadow
    #: moved by hand where the angles put it: do(shadow_position) right 0.10).
    intervened_share: float = 0.5


class DataOracle(nn.Module):
    """Images (B, H, W) or (B, H, W, C) uint8 -> factors (B, K): a class per categorical factor,
    a value in its range per continuous one (regressed as a fraction of the range)."""

    def __init__(self, schema: Schema, config: DataOracleConfig) -> None:
        super().__init__()
        self.schema = schema
        self.config = config
        self.sizes = [f.size if f.kind == "categorical" else 1 for f in schema.factors]
        self.trunk = ConvTrunk(schema.image_shape, config.channels, config.hidden)
        self.head = nn.Linear(config.hidden, sum(self.sizes))
        self.info: dict[str, Any] = {}

    def _input(self, images: np.ndarray) -> Tensor:
        x = torch.as_tensor(np.asarray(images)).float()
        x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
        return x if self.schema.binary else x / 255.0

    def _outputs(self, images: np.ndarray) -> tuple[Tensor, Tensor]:
        """Features (B, hidden) and head outputs (B, sum(sizes)) of images, in chunks."""
        x = self._input(images)
        features = torch.cat([self.trunk(x[s : s + _CHUNK]) for s in range(0, len(x), _CHUNK)])
        return features, self.head(features)

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        """The trunk's features (B, hidden) float64, for `benchmark`'s Fréchet distance."""
        self.eval()
        return self._outputs(images)[0].numpy().astype(np.float64)

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Factors (B, K) float64 read off images: class indices and values in their unit."""
        self.eval()
        parts = torch.split(self._outputs(images)[1], self.sizes, dim=-1)
        out = []
        for factor, part in zip(self.schema.factors, parts, strict=True):
            if factor.kind == "categorical":
                out.append(part.argmax(-1).double())
            else:
                low, high = _range(factor)
                out.append(low + (high - low) * part[:, 0].double().clamp(0, 1))
        return torch.stack(out, -1).numpy()

    def loss(self, images: np.ndarray, factors: np.ndarray) -> Tensor:
        """Cross-entropy per categorical factor plus squared error per continuous fraction."""
        parts = torch.split(self._outputs(images)[1], self.sizes, dim=-1)
        target = torch.as_tensor(np.asarray(factors, np.float64))
        total = torch.zeros(())
        for column, (factor, part) in enumerate(zip(self.schema.factors, parts, strict=True)):
            if factor.kind == "categorical":
                total = total + F.cross_entropy(part, target[:, column].long())
            else:
                low, high = _range(factor)
                fraction = ((target[:, column] - low) / (high - low)).float()
                total = total + 10.0 * F.mse_loss(part[:, 0], fraction)
        return total


def _range(factor: Any) -> tuple[float, float]:
    assert factor.low is not None and factor.high is not None
    return float(factor.low), float(factor.high)


def oracle_errors(oracle: DataOracle, images: np.ndarray, factors: np.ndarray) -> dict[str, float]:
    """Per factor: accuracy of a categorical one, mean absolute error (its unit) of a continuous."""
    read = oracle.predict(images)
    out = {}
    for column, factor in enumerate(oracle.schema.factors):
        hit = read[:, column] == factors[:, column]
        miss = np.abs(read[:, column] - factors[:, column])
        out[factor.name] = float(hit.mean() if factor.kind == "categorical" else miss.mean())
    return out


def _intervened(
    truth: Any, schema: Schema, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Images and factors (B, K) of `rows` rendered by `truth` under do() of one random factor
    to random values (a class, or a value uniform over the range)."""
    factor = schema.factors[int(rng.integers(len(schema.factors)))]
    if factor.kind == "categorical":
        values: np.ndarray = rng.integers(0, factor.size, len(rows))
    else:
        values = rng.uniform(*_range(factor), len(rows))
    factors, images = truth.counterfactual(rows, {factor.name: values})
    return images, np.asarray(factors, np.float64)


def _batch(
    data: Any, truth: Any, rows: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Images and factors of `rows`, the first `share` of them intervened on (with a truth)."""
    images, factors = data.images(rows), np.asarray(data.factors(rows), np.float64)
    cut = round(share * len(rows)) if truth is not None else 0
    if cut:
        images[:cut], factors[:cut] = _intervened(truth, data.schema, rows[:cut], rng)
    return images, factors


def train_data_oracle(
    data: Any,
    config: DataOracleConfig = DataOracleConfig(),
    progress: bool = False,
    truth: Any = None,
) -> DataOracle:
    """Train on random batches of the rows the benchmark never queries (its random split), part
    of each rendered under a random do() where the data's generator `truth` is known; measure
    per factor on up to `NUM_EVAL` of the held-out rows (`info["held_out"]`) and, with a truth,
    on the same rows intervened on (`info["held_out_intervened"]`)."""
    if config.steps < 1:
        raise CausalSpritesError(f"oracle steps must be >= 1, got {config.steps}")
    torch.manual_seed(config.seed)
    oracle = DataOracle(data.schema, config)
    train_rows, test_rows = random_split(len(data), TEST_FRACTION, SPLIT_SEED)
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=config.steps, pct_start=0.1
    )
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    oracle.train()
    with progress_bar(f"training the oracle of {data.schema.name}", progress) as update:
        for step in range(config.steps):
            rows = np.sort(rng.choice(train_rows, config.batch_size))
            loss = oracle.loss(*_batch(data, truth, rows, config.intervened_share, rng))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            update(step + 1, config.steps)
    eval_rows = np.sort(rng.permutation(test_rows)[:NUM_EVAL])
    held_out = oracle_errors(oracle, data.images(eval_rows), np.asarray(data.factors(eval_rows)))
    if truth is not None:  # a random factor per batch, as in training
        chunks = [
            eval_rows[i : i + config.batch_size]
            for i in range(0, len(eval_rows), config.batch_size)
        ]
        moved = [_batch(data, truth, chunk, 1.0, rng) for chunk in chunks]
        images, factors = (np.concatenate(part) for part in zip(*moved, strict=True))
        oracle.info["held_out_intervened"] = oracle_errors(oracle, images, factors)
    oracle.info |= {
        "held_out": held_out,
        "num_eval": len(eval_rows),
        "train_seconds": time.perf_counter() - start,
        "torch": torch.__version__,
    }
    return oracle.eval()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_oracle(
    data: Any,
    source: Path,
    config: DataOracleConfig = DataOracleConfig(),
    progress: bool = False,
    truth: Any = None,
) -> DataOracle:
    """The oracle of the dataset file `source` (loaded as `data`, its generator `truth` if
    known): read from the data directory (`oracles/<file hash>-<settings hash>`) if trained
    before, else trained and saved there."""
    settings = json.dumps({**asdict(config), "intervened": truth is not None}, sort_keys=True)
    key = f"{_file_hash(source)[:16]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    directory = data_dir() / "oracles" / key
    oracle = DataOracle(data.schema, config)
    if (directory / INFO_FILE).is_file():
        oracle.load_state_dict(load_tensors(directory / WEIGHTS_FILE))
        oracle.info = json.loads((directory / INFO_FILE).read_text())["info"]
        return oracle.eval()
    oracle = train_data_oracle(data, config, progress, truth)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(directory / WEIGHTS_FILE, oracle.state_dict(), {"format": "data-oracle"})
    text = json.dumps({"config": asdict(config), "info": oracle.info, "source": str(source)})
    write_text_atomic(directory / INFO_FILE, text + "\n")
    return oracle
