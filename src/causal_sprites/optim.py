"""The optimiser's side of training: Adam's parameter groups (the decoder may learn at its own
rate), the learning-rate schedule over the run's budget, and the gradients a step checks."""

from __future__ import annotations

import math
from typing import Any

import torch

from causal_sprites.config import RunConfig
from causal_sprites.model.vae import ConditionalVAE

#: The share of the budget over which the "decay" schedule anneals, after a constant rate.
DECAY_SHARE = 0.2


def lr_factor(config: RunConfig, step: int, steps: int | None, elapsed: float) -> float:
    """The schedule's factor of the next step: 1 (constant); cosine-annealed to 0.02 over the
    budget; or ("decay") 1, then so annealed over the budget's last DECAY_SHARE. The budget
    used is the larger of the step and the time fraction, so a resume continues it."""
    train = config.train
    if train.lr_schedule == "constant":
        return 1.0
    used = [step / steps] if steps else []
    if train.max_minutes:
        used.append(elapsed / (60 * train.max_minutes))
    fraction = min(max(used, default=0.0), 1.0)
    if train.lr_schedule == "decay":
        fraction = max(fraction - (1 - DECAY_SHARE), 0.0) / DECAY_SHARE
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * fraction))


def parameter_groups(model: ConditionalVAE, config: RunConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups: everything at `lr`, or with `decoder_lr` the decoder apart (it
    learns the images and takes a far higher rate than the classifier sharing the encoder)."""
    train = config.train
    trained = [p for p in model.parameters() if p.requires_grad]  # not the fitted mechanisms
    if train.decoder_lr is None:
        return [{"params": trained, "lr": train.lr}]
    decoder = {id(p) for p in model.decoder.parameters()}
    rest = [p for p in trained if id(p) not in decoder]
    return [
        {"params": rest, "lr": train.lr},
        {"params": list(model.decoder.parameters()), "lr": train.decoder_lr},
    ]


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    """The gradients the last backward pass left (parameters without one are left out)."""
    return [p.grad for p in model.parameters() if p.grad is not None]
