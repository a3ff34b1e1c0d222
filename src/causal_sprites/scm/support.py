"""Where a counterfactual leaves the data the model learned from: an intervened factor whose
value its own mechanism makes near-impossible given its parents there."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from causal_sprites.scm.queries import CausalModel

#: An intervened value with parents rarer than this under the model's mechanism given them
#: (`FactorMechanisms.typicality`) is outside the training data: `support_warnings` says so.
RARE = 1e-4


def support_warnings(
    model: CausalModel, rows: np.ndarray, intervened: Sequence[Iterable[str]]
) -> list[list[str]]:
    """Per row of counterfactual factors (B, K), a warning for each intervened factor with
    parents whose value the model's mechanism makes rarer than `RARE` given the parents
    there: the image drawn for it is an extrapolation beyond the training data (the
    pendulum's shadow moved off its angles' projection is drawn worse than no change)."""
    names = {n for chosen in intervened for n in chosen if model.model.parents[n]}
    device = next(model.model.parameters()).device
    values = {n: torch.as_tensor(rows[:, k]).to(device) for k, n in enumerate(model.schema.names)}
    with torch.no_grad():
        typical = {n: model.model.typicality(n, values).cpu().numpy() for n in names}
    return [
        [
            f"do({n}={model.schema.factor(n).text(rows[b, model.schema.index(n)])}) has "
            f"probability {typical[n][b]:.1g} given its parents under the model: outside "
            "the data it learned from, the image is an extrapolation"
            for n in chosen
            if n in typical and typical[n][b] < RARE
        ]
        for b, chosen in enumerate(intervened)
    ]
