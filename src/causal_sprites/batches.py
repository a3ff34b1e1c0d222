"""What training reads, for any dataset: the run's split, the images and labels of its rows on
the training device, the seeded batches (the same on every rank and after a resume), and which
factor mechanisms the data can count and which it must learn."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from causal_sprites.config import RunConfig
from causal_sprites.data.dataset import Dataset, random_split
from causal_sprites.data.dsprites import DSprites, unpack_torch
from causal_sprites.errors import CausalSpritesError
from causal_sprites.runtime import Distributed
from causal_sprites.scm.graph import needs_network, parents_from_edges

#: Images (b, C, H, W) float, on the training device, of dataset rows (b,) (a tensor there).
TrainingImages = Callable[[torch.Tensor], torch.Tensor]


def training_images(data: DSprites | Dataset, device: torch.device) -> TrainingImages:
    """How training reads its images: dSprites' bit-packed store whole on the device, unpacked
    per batch; any other dataset's uint8 rows read per batch (from memory, or from its image
    file row by row), so a set larger than memory trains in bounded memory."""
    if isinstance(data, DSprites):
        packed = torch.from_numpy(data.packed).to(device)
        return lambda rows: unpack_torch(packed[rows]).unsqueeze(1).float()

    def read(rows: torch.Tensor) -> torch.Tensor:
        order = rows.cpu().numpy()
        images = torch.from_numpy(np.ascontiguousarray(data.images(order)))
        images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
        return images.to(device).float()

    return read


def training_labels(data: DSprites | Dataset, device: torch.device) -> torch.Tensor:
    """Every row's factors (N, K) on the device: int64 classes where every factor is
    categorical, else float32 (a class index or a value per column)."""
    factors = torch.as_tensor(np.asarray(data.factors(slice(None))), device=device)
    return factors.long() if data.schema.categorical else factors.float()


class Batches:
    """Training batches in a seeded order per epoch: batch `step` is a pure function of step.

    Under torchrun each rank takes its contiguous share of the global batch (the role of a
    DistributedSampler), so a resumed or a distributed run sees exactly the same images; the
    standard normal noise behind z is drawn per global batch too and sliced the same way.
    """

    def __init__(
        self,
        images: TrainingImages,
        labels: torch.Tensor,
        rows: np.ndarray,
        config: RunConfig,
        distributed: Distributed | None = None,
    ):
        self.images, self.labels = images, labels
        self.rows = torch.from_numpy(rows).to(labels.device)
        self.batch_size = min(config.train.batch_size, len(rows))
        self.z_dim = config.model.z_dim
        self.pixel_sample = config.train.pixel_sample
        self.window = config.model.window  # the largest decoder window: one draw per pixel
        self.seed = config.train.seed
        self.per_epoch = len(rows) // self.batch_size
        distributed = distributed or Distributed()
        if self.batch_size % distributed.world_size:
            raise CausalSpritesError(
                f"batch size {self.batch_size} does not split evenly over "
                f"{distributed.world_size} processes"
            )
        share = self.batch_size // distributed.world_size
        self.share = slice(distributed.rank * share, (distributed.rank + 1) * share)
        self._epoch, self._order = -1, self.rows

    def __call__(
        self, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This rank's images (b, C, H, W) float, labels (b, K), z noise (b, z_dim) and the
        uniform draws (b, window, window) that pick a subsampled loss's pixels (None: all)."""
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            permutation = torch.randperm(len(self.rows), generator=generator).to(self.rows.device)
            self._epoch, self._order = epoch, self.rows[permutation]
        chosen = self._order[position * self.batch_size : (position + 1) * self.batch_size]
        chosen = chosen[self.share]
        noise_generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * step + 1)
        noise = torch.randn(self.batch_size, self.z_dim, generator=noise_generator)[self.share]
        images = self.images(chosen)
        uniform = None
        if self.pixel_sample:
            shape = (self.batch_size, self.window, self.window)
            uniform = torch.rand(shape, generator=noise_generator)[self.share]
            uniform = uniform.to(images.device)
        return images, self.labels[chosen], noise.to(images.device), uniform


def split_rows(data: DSprites | Dataset, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of the run's split; `subset` trims the training rows (for tiny runs).
    dSprites also has a held-out split of factor combinations; any dataset the random one."""
    if isinstance(data, DSprites):
        train_rows, test_rows = data.split(
            config.train.split, test_fraction=config.train.test_fraction, seed=config.train.seed
        )
    elif config.train.split == "random":
        train_rows, test_rows = random_split(
            len(data), config.train.test_fraction, config.train.seed
        )
    else:
        raise CausalSpritesError(f"the {config.train.split!r} split is dSprites' only")
    if config.train.subset is not None:
        keep = np.random.default_rng(config.train.seed).permutation(len(train_rows))
        train_rows = np.sort(train_rows[keep[: config.train.subset]])
    return train_rows, test_rows


def learned_mechanisms(data: DSprites | Dataset, config: RunConfig) -> tuple[str, ...]:
    """The categorical factors whose conditional table has more cells than the training rows can
    fill (`scm.graph.needs_network`): their mechanisms are learned as networks of their parents.
    (A factor with a continuous parent, and a continuous factor, is always learned.)"""
    schema = data.schema
    parents = parents_from_edges(config.graph, schema.names)
    num_rows = len(split_rows(data, config)[0])
    learned = []
    for factor in schema.factors:
        parent_factors = [schema.factor(p) for p in parents[factor.name]]
        if factor.kind != "categorical" or any(p.kind != "categorical" for p in parent_factors):
            continue
        if needs_network([p.size for p in parent_factors], factor.size, num_rows):
            learned.append(factor.name)
    return tuple(learned)
