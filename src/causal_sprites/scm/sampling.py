"""Samples of p(x | evidence) and p(x | do(...)), with what they say of the factors: exact marginals
of the enumerated factor network where every factor is categorical, else summaries of draws of
the factor SCM (`scm/factor_sampling.py`); images through the image mechanism with fresh style and
pixel noise. Methods of `CausalModel` (`scm/queries.py`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import torch
from chirho.interventional.handlers import do as chirho_do
from pyro import poutine
from torch import Tensor

from causal_sprites.scm.factor_sampling import draw_given, draw_under, parse_evidence_of, summarise
from causal_sprites.scm.graph import marginals, restrict, sample_grid
from causal_sprites.scm.inputs import Value, as_interventions, check_count, seeded
from causal_sprites.scm.results import SampleResult

if TYPE_CHECKING:
    from causal_sprites.scm.queries import CausalModel


@torch.no_grad()
def condition_query(
    self: CausalModel,
    evidence: Mapping[str, Value | tuple[float, float]] | None = None,
    num_samples: int = 16,
    seed: int | None = None,
) -> SampleResult:
    """Samples of p(x | evidence): factors from the exact posterior (by rejection from the
    factor SCM where a factor is continuous: a value holds within `TOLERANCE` of its range, a
    (low, high) range as given), then the image mechanism with fresh style and pixel noise
    (pyro.condition on the factor sites)."""
    start = time.perf_counter()
    check_count(num_samples)
    if self.schema.continuous:
        with seeded(seed):
            rows = draw_given(self.model, parse_evidence_of(self.schema, evidence or {}))
        return _sample_images(self, rows, num_samples, seed, start)
    given = self.schema.classes(cast(Mapping[str, Value], evidence or {}))
    names = self.schema.names
    log_joint = restrict(self.factor_graph.log_joint(), given, names)
    with seeded(seed):
        classes = sample_grid(log_joint, num_samples).to(self.device)
        data = {name: classes[:, i] for i, name in enumerate(names)}
        values = poutine.condition(self.scm, data=data)(num_samples)
    images = self.user_images(values["x"][0]).numpy()
    elapsed = time.perf_counter() - start
    return SampleResult(images, classes.cpu().numpy(), marginals(log_joint, names), elapsed)


@torch.no_grad()
def intervene_query(
    self: CausalModel, do: Mapping[str, Value], num_samples: int = 16, seed: int | None = None
) -> SampleResult:
    """Samples of p(x | do(...)): the SCM under ChiRho's `do`, intervened factors cut from
    their parents, descendants resampled; marginals by enumerating the mutilated network."""
    start = time.perf_counter()
    check_count(num_samples)
    if self.schema.continuous:
        fixed = as_interventions(do, 1, self.schema)
        with seeded(seed):
            rows = draw_under(self.model, {n: v[0] for n, v in fixed.items()})
        return _sample_images(self, rows, num_samples, seed, start)
    actions, names = self.schema.classes(do), self.schema.names
    log_joint = restrict(self.factor_graph.log_joint(actions), {}, names)
    tensors = {name: torch.tensor(v, device=self.device) for name, v in actions.items()}
    with seeded(seed):
        values = chirho_do(self.scm, actions=tensors)(num_samples)
    classes = torch.stack([values[name].expand(1, num_samples)[0] for name in names], -1).cpu()
    images = self.user_images(values["x"][0]).numpy()
    elapsed = time.perf_counter() - start
    return SampleResult(images, classes.numpy(), marginals(log_joint, names), elapsed)


def _sample_images(
    self: CausalModel, rows: Tensor, num_samples: int, seed: int | None, start: float
) -> SampleResult:
    """Images of the first `num_samples` of factor rows drawn from an answer, through the
    image mechanism with fresh style and pixel noise; the answer summarised from all rows."""
    chosen = rows[:num_samples]
    data = {name: chosen[:, i] for i, name in enumerate(self.schema.names)}
    with seeded(None if seed is None else seed + 1), torch.no_grad():
        values = poutine.condition(self.scm, data=data)(len(chosen))
    frequencies, continuous = summarise(rows, self.schema)
    images = self.user_images(values["x"][0]).numpy()
    elapsed = time.perf_counter() - start
    return SampleResult(images, chosen.cpu().numpy(), frequencies, elapsed, continuous)
