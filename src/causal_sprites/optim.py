"""The optimiser's side of training: Adam's parameter groups (the decoder may learn at its own
rate), the learning-rate schedule over the run's budget, and the check of each step's gradient
(skipped when not finite, clipped when far above the recent steps')."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import torch

from causal_sprites.config import RunConfig
from causal_sprites.model.vae import ConditionalVAE

#: The share of the budget over which the "decay" schedule anneals, after a constant rate.
DECAY_SHARE = 0.2
#: The "anneal" objective schedule (`objective_weights`): the KL's weight at the start, the
#: share of the budget over which it falls to 1, the last share over which the beta-NLL
#: weighting falls to the plain likelihood (beta 0), while the "decay" learning rate anneals,
#: and where the small-change term starts; it stops where beta starts to fall. On through the
#: last share, where the decoder sharpens the objects' edges, it spoilt the edges of 2 runs in 4;
#: from 0.3 to 0.8 of the budget every run kept them (bench/own_data.py; BENCHMARKS.md).
KL_START, KL_SHARE, BETA_SHARE, CHANGE_START = 8.0, 0.5, 0.2, 0.3
#: The gradient norms of the last CLIP_WINDOW steps set the clipping bound (their median times
#: `grad_clip`); it applies once CLIP_MIN_STEPS norms are known.
CLIP_WINDOW, CLIP_MIN_STEPS = 100, 20
EXTRA_TERMS = ("independence_weight", "change_weight")  # weights of `model/penalties.py`'s terms


def budget_fraction(config: RunConfig, step: int, steps: int | None, elapsed: float) -> float:
    """How much of the budget is used: the larger of the steps' and the minutes' shares (so a
    resumed run continues its schedules)."""
    used = [step / steps] if steps else []
    if config.train.max_minutes:
        used.append(elapsed / (60 * config.train.max_minutes))
    return min(max(used, default=0.0), 1.0)


def objective_weights(config: RunConfig, fraction: float) -> dict[str, float]:
    """The loss's weights at `fraction` of the budget (`budget_fraction`): the extra terms'
    (`EXTRA_TERMS`) if any; with "anneal" `kl_weight` KL_START falling to 1 over the first
    KL_SHARE, `beta` 1 falling to 0 over the last BETA_SHARE (ends on ELBO), and the
    small-change term only from CHANGE_START until beta falls."""
    weights = {name: w for name in EXTRA_TERMS if (w := getattr(config.train, name))}
    if config.train.objective_schedule == "none":
        return weights
    fraction = min(max(fraction, 0.0), 1.0)
    if not CHANGE_START <= fraction < 1.0 - BETA_SHARE:
        weights.pop("change_weight", None)
    return {
        **weights,
        "kl_weight": KL_START + (1.0 - KL_START) * min(fraction / KL_SHARE, 1.0),
        "beta": min((1.0 - fraction) / BETA_SHARE, 1.0),
    }


def lr_factor(config: RunConfig, step: int, steps: int | None, elapsed: float) -> float:
    """The schedule's factor of the next step: 1 (constant); cosine-annealed to 0.02 over the
    budget; or ("decay") 1, then so annealed over the budget's last DECAY_SHARE."""
    if config.train.lr_schedule == "constant":
        return 1.0
    fraction = budget_fraction(config, step, steps, elapsed)
    if config.train.lr_schedule == "decay":
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


class GradientGuard:
    """Checks each step's gradient before Adam takes it. One that is not finite is refused (the
    batch is skipped). With `clip`, one whose norm exceeds `clip` times the median norm of the
    last CLIP_WINDOW steps is scaled down to that bound: a rare batch's spike moves the weights
    no further than a usual step. The bound is relative, since the norms' scale differs several
    fold between seeds of one dataset and over one run. `recent` resumes a run's history."""

    def __init__(self, clip: float | None, recent: list[float] | None = None) -> None:
        self.clip = clip
        self.recent: deque[float] = deque(recent or (), maxlen=CLIP_WINDOW)
        self.clipped_steps = 0
        self.largest = 0.0  # the largest finite norm since the last `take_largest`

    def admit(self, model: torch.nn.Module) -> bool:
        """Whether the step may be taken; clips the gradients in place where it is due."""
        grads = gradients(model)
        norm = float(torch.nn.utils.get_total_norm(grads))
        if not math.isfinite(norm):
            return False
        self.largest = max(self.largest, norm)
        if self.clip and len(self.recent) >= CLIP_MIN_STEPS:
            bound = self.clip * statistics.median(self.recent)
            if norm > bound:
                for grad in grads:
                    grad.mul_(bound / norm)
                self.clipped_steps += 1
        self.recent.append(norm)
        return True

    def take_largest(self) -> float:
        """The largest finite norm since the last call (for the log)."""
        largest, self.largest = self.largest, 0.0
        return largest
