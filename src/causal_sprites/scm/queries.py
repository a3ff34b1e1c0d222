"""Queries on a trained run: reconstruction and label edits of the conditional VAE, and the
structural causal model's conditioning, interventions and counterfactuals built on it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from causal_sprites.config import RunConfig
from causal_sprites.data.factors import FACTORS, SIZES, normalize_assignments
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.runs import load_model

CHUNK = 512


def as_images(x: np.ndarray | Tensor) -> Tensor:
    """0/1 images (B, 64, 64) or (64, 64) -> float (B, 1, 64, 64); anything else is refused."""
    images = torch.as_tensor(np.asarray(x))
    if images.dim() == 2:
        images = images[None]
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3 or tuple(images.shape[1:]) != (64, 64):
        raise CausalSpritesError(f"images must have shape (B, 64, 64), got {tuple(images.shape)}")
    if not bool(((images == 0) | (images == 1)).all()):
        raise CausalSpritesError("images must be binary (0/1 pixels)")
    return images.float()[:, None]


def as_labels(y: np.ndarray | Tensor, batch: int) -> Tensor:
    """Factor classes (B, 5) or (B, 6) with color -> (B, 5) int64, range-checked."""
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if labels.dim() == 1:
        labels = labels[None]
    if labels.dim() != 2 or labels.shape[1] not in (5, 6):
        raise CausalSpritesError(f"labels must have shape (B, 5), got {tuple(labels.shape)}")
    labels = labels[:, -5:]
    if labels.shape[0] != batch:
        raise CausalSpritesError(f"{labels.shape[0]} labels for {batch} images")
    for i, (name, size) in enumerate(zip(FACTORS, SIZES, strict=True)):
        if bool(((labels[:, i] < 0) | (labels[:, i] >= size)).any()):
            raise CausalSpritesError(f"label for {name} out of range 0..{size - 1}")
    return labels


class CausalModel:
    """A trained run: the conditional VAE and the SCM over its exogenous noise."""

    def __init__(self, model: ConditionalVAE, config: RunConfig, run_dir: Path | None = None):
        self.model = model
        self.config = config
        self.run_dir = run_dir

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def infer_labels(self, x: np.ndarray | Tensor) -> np.ndarray:
        """Most likely factor classes (B, 5) of images (B, 64, 64) under the classifier q(y | x)."""
        images = as_images(x)
        out = []
        for start in range(0, len(images), CHUNK):
            logits = self.model.classify(images[start : start + CHUNK].to(self.device))
            out.append(torch.stack([lg.argmax(-1) for lg in logits], -1).cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def encode(self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None) -> Tensor:
        """Posterior means (B, z_dim) of q(z | x, y); labels from the classifier when y is None."""
        images = as_images(x)
        labels = as_labels(self.infer_labels(images[:, 0]) if y is None else y, len(images))
        codes = []
        for start in range(0, len(images), CHUNK):
            chunk = slice(start, start + CHUNK)
            posterior = self.model.z_posterior(
                images[chunk].to(self.device), labels[chunk].to(self.device)
            )
            codes.append(posterior.mean.cpu())
        return torch.cat(codes)

    @torch.no_grad()
    def decode_probs(self, y: np.ndarray | Tensor, z: Tensor) -> Tensor:
        """Pixel probabilities (B, 64, 64) of p(x | y, z)."""
        labels = as_labels(y, len(z))
        out = []
        for start in range(0, len(z), CHUNK):
            chunk = slice(start, start + CHUNK)
            logits = self.model.x_logits(labels[chunk].to(self.device), z[chunk].to(self.device))
            out.append(torch.sigmoid(logits).cpu())
        return torch.cat(out)

    def decode(self, y: np.ndarray | Tensor, z: Tensor) -> np.ndarray:
        """The most likely image (B, 64, 64) uint8 of p(x | y, z): pixels with p > 1/2."""
        return (self.decode_probs(y, z) > 0.5).numpy().astype(np.uint8)

    def reconstruct_with_codes(
        self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reconstructions (B, 64, 64) uint8 and the posterior means (B, z_dim) behind them."""
        images = as_images(x)
        labels = self.infer_labels(images[:, 0]) if y is None else as_labels(y, len(images))
        z = self.encode(images[:, 0], labels)
        return self.decode(labels, z), z.numpy()

    def reconstruct(
        self, x: np.ndarray | Tensor, y: np.ndarray | Tensor | None = None
    ) -> np.ndarray:
        """Encode (posterior mean z) and decode: (B, 64, 64) uint8."""
        return self.reconstruct_with_codes(x, y)[0]

    def edit(
        self,
        x: np.ndarray | Tensor,
        y: np.ndarray | Tensor | None = None,
        set_factors: Mapping[str, str | int] | None = None,
    ) -> np.ndarray:
        """Decode the same z with some labels changed by hand ("same sprite, but a heart")."""
        images = as_images(x)
        labels = torch.as_tensor(
            self.infer_labels(images[:, 0]) if y is None else as_labels(y, len(images))
        ).clone()
        z = self.encode(images[:, 0], labels)
        for name, value in normalize_assignments(set_factors or {}).items():
            labels[:, FACTORS.index(name)] = value
        return self.decode(labels, z)


def load_run(run: str | Path, device: str | torch.device = "cpu") -> CausalModel:
    """The trained VAE + SCM of a run directory (`pretrained`: the one shipped with the package)."""
    from causal_sprites.runs import resolve_run
    from causal_sprites.runtime import choose_device

    chosen = device if isinstance(device, torch.device) else choose_device(device)
    model, config = load_model(run, chosen)
    return CausalModel(model, config, resolve_run(run))
