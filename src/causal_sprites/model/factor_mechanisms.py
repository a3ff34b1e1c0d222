"""The factors' mechanisms of the conditional VAE: each factor given its parents, as a counted
table (categorical factors with few parent rows), a network of the parents' codes (categorical
factors with many parent rows or a continuous parent) or a flow (continuous factors,
`model/flows.py`). A mixin of `ConditionalVAE`, whose state (buffers `cpt_*`, `mechanism_nets`,
`flows`) it registers on the model itself, so checkpoints keep their keys."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.flows import ContinuousMechanism, ScalarFlow
from causal_sprites.model.nets import encode_factors
from causal_sprites.scm.graph import FactorGraph

#: Hidden units of a learned factor mechanism (`mechanism_nets`).
MECHANISM_HIDDEN = 64
#: The learned mechanisms' own fit (`fit_learned`): batch, epochs (at most `FIT_MAX_STEPS`
#: steps) and Adam's rate, annealed to 0 by a cosine.
FIT_BATCH, FIT_EPOCHS, FIT_MAX_STEPS, FIT_LR = 2048, 500, 4000, 1e-2


class FactorMechanisms(nn.Module):
    """p(factor | parents) for every factor of `schema` under the graph's `parents`."""

    schema: Schema
    names: tuple[str, ...]
    order: list[str]
    parents: dict[str, tuple[str, ...]]

    def build_mechanisms(self, learned: Sequence[str]) -> None:
        """Register each factor's mechanism; `learned` names the categorical factors whose
        tables are learned as networks (the run's `config.network_mechanisms`)."""
        #: Learned mechanisms: logits of a categorical factor from its parents' codes, for the
        #: factors with too many parent rows to count (`learned`) or with a
        #: continuous parent; a continuous factor's flow (`model/flows.py`).
        self.mechanism_nets = nn.ModuleDict()
        self.flows = nn.ModuleDict()
        for factor in self.schema.factors:
            name = factor.name
            parents = [self.schema.factor(p) for p in self.parents[name]]
            context = sum(p.width for p in parents)
            if factor.kind == "continuous":
                self.flows[name] = ContinuousMechanism(factor, context)
            elif name in learned or any(p.kind != "categorical" for p in parents):
                self.mechanism_nets[name] = nn.Sequential(
                    nn.Linear(context, MECHANISM_HIDDEN), nn.SiLU(),
                    nn.Linear(MECHANISM_HIDDEN, factor.size),
                )  # fmt: skip
                if all(p.kind == "categorical" for p in parents):
                    sizes = [p.size for p in parents]
                    grid = torch.cartesian_prod(*(torch.arange(k) for k in sizes))
                    grid = grid.view(-1, len(sizes))
                    self.register_buffer(f"rows_{name}", grid, persistent=False)
            else:
                sizes = [p.size for p in parents]
                shape = (*sizes, factor.size)
                self.register_buffer(f"cpt_{name}", torch.full(shape, -math.log(factor.size)))

    def fit_tables(self, y: Tensor, smoothing: float = 0.1) -> None:
        """Set every factor's table to smoothed frequencies of training labels y (N, K).

        `smoothing` is the Dirichlet pseudo-count per cell: it keeps every log-probability finite
        (a user's image may show a combination training never saw) while adding at most 4 pseudo
        observations to a row of 40 classes; add-one smoothing added 40 and visibly flattened rare
        rows (TV 0.041 against 0.026 for P(shape | posY = 31) on the collider variant)."""
        counted = [n for n in self.names if hasattr(self, f"cpt_{n}")]
        if not counted:
            return
        columns = [self.names.index(n) for n in counted]
        size_of = {n: self.schema.factor(n).size for n in counted}
        parents = {n: self.parents[n] for n in counted}
        fitted = FactorGraph.fit(size_of, parents, y[:, columns].long(), smoothing)
        for name in counted:
            self.cpt(name).copy_(fitted.log_tables[name].float())

    def learned_parameters(self) -> list[nn.Parameter]:
        """The parameters of the learned mechanisms (networks and flows)."""
        return [*self.mechanism_nets.parameters(), *self.flows.parameters()]

    def fit_learned(self, y: Tensor, seed: int) -> float | None:
        """Fit the learned mechanisms to training labels y (N, K) by maximum likelihood, as
        `fit_tables` counts the tables: p(y) is a factor of the joint of its own, so its optimum
        does not depend on the images, and on all labels in large batches it is reached far
        closer than in the VAE's small ones (the pendulum's shadow_length: the mechanism's median
        off the truth by 0.20 world units at the median, the noise alone 0.13; trained within
        the VAE's steps, 0.4). Returns the last batch's mean NLL (None: nothing learned)."""
        parameters = self.learned_parameters()
        if not parameters:
            return None
        steps = min(FIT_MAX_STEPS, FIT_EPOCHS * math.ceil(len(y) / FIT_BATCH))
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(parameters, lr=FIT_LR)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(steps):
            chosen = torch.randint(len(y), (min(FIT_BATCH, len(y)),), generator=generator)
            loss = self.mechanism_loss(y[chosen.to(y.device)]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        return float(loss.detach())

    # -- one conditional per variable -------------------------------------------------------
    def cpt(self, name: str) -> Tensor:
        """Log-probability table of a factor, (*parent sizes, K): the storage of `factors`; a
        learned mechanism's is its network evaluated at every parent row."""
        if name in self.mechanism_nets:
            sizes = [self.schema.factor(p).size for p in self.parents[name]]
            rows = self._parent_codes(name, getattr(self, f"rows_{name}"))
            logits = self.mechanism_nets[name](rows).float()
            return torch.log_softmax(logits, -1).view(*sizes, -1)
        table: Tensor = getattr(self, f"cpt_{name}")
        return table

    def _parent_codes(self, name: str, parents: Tensor) -> Tensor:
        """Codes (N, sum of parent widths) of a factor's parents' values (N, P)."""
        return encode_factors(parents, [self.schema.factor(p) for p in self.parents[name]])

    def parent_codes(self, name: str, values: Mapping[str, Tensor]) -> Tensor:
        """Codes (N, sum of parent widths) of a factor's parents given as {factor: (N,)}."""
        parents = self.parents[name]
        if not parents:
            batch = next((v.shape for v in values.values()), torch.Size([1]))
            return torch.zeros(*batch, 0, device=self.device())
        columns = torch.broadcast_tensors(*(values[p] for p in parents))
        stacked = torch.stack([c.float() for c in columns], -1)
        return self._parent_codes(name, stacked.reshape(-1, len(parents))).view(
            *stacked.shape[:-1], -1
        )

    def mechanism_loss(self, y: Tensor) -> Tensor:
        """-log p(y_f | parents) (B,) summed over the learned mechanisms (networks and flows),
        for labels (B, K): what `fit_learned` minimises (the tables are counted)."""
        total = torch.zeros(len(y), device=y.device)
        for name in (*self.mechanism_nets, *self.flows):
            columns = [self.names.index(p) for p in self.parents[name]]
            codes = self._parent_codes(name, y[:, columns]) if columns else y[:, :0].float()
            target = y[:, self.names.index(name)]
            if name in self.flows:
                total = total - self.flow(name).log_prob(target, codes)
            else:
                logits = self.mechanism_nets[name](codes).float()
                total = total + F.cross_entropy(logits, target.long(), reduction="none")
        return total

    def typicality(self, name: str, values: Mapping[str, Tensor]) -> Tensor:
        """How typical the value of factor `name` in `values` {factor: (B,)} is of its mechanism
        given the parents there (B,): the two-sided tail probability of its noise for a
        continuous factor (1 at the mechanism's median), its class's probability for a
        categorical one. A value the training data makes this rare was never drawn."""
        if name in self.flows:
            noise = self.flow(name).abduct(values[name], self.parent_codes(name, values))
            return torch.special.erfc(noise.abs() / math.sqrt(2.0))
        probs = cast(dist.Categorical, self.factor_dist(name, values)).probs
        chosen = values[name].long().reshape(-1, 1)
        return probs.expand(len(chosen), -1).gather(-1, chosen).squeeze(-1)

    def flow(self, name: str) -> ContinuousMechanism:
        """A continuous factor's mechanism (`model/flows.py`)."""
        return cast(ContinuousMechanism, self.flows[name])

    @property
    def factors(self) -> FactorGraph:
        """The factor-level SCM: the graph with the learned tables (live, on the model's device;
        `.exact()` for a float64 copy); categorical factors with categorical parents only."""
        if not all(hasattr(self, f"cpt_{n}") or hasattr(self, f"rows_{n}") for n in self.names):
            raise CausalSpritesError(
                "exact factor tables need categorical factors with categorical parents; "
                f"this model has continuous ones ({', '.join(self.schema.continuous)})"
            )
        return FactorGraph(self.parents, {name: self.cpt(name) for name in self.names})

    def factor_dist(self, name: str, values: Mapping[str, Tensor]) -> dist.TorchDistribution:
        """p(factor | its parents) for parent values in `values`: a table row per image, a
        network's logits, or a continuous factor's flow."""
        if name in self.flows:
            return ScalarFlow(self.flow(name), self.parent_codes(name, values))
        if name in self.mechanism_nets and not hasattr(self, f"rows_{name}"):
            logits = self.mechanism_nets[name](self.parent_codes(name, values)).float()
            return dist.Categorical(logits=logits)
        index = tuple(values[p].long() for p in self.parents[name])
        return dist.Categorical(logits=self.cpt(name)[index] if index else self.cpt(name))

    def stack(self, values: Mapping[str, Tensor]) -> Tensor:
        """Factor values {name: (...,)} as rows (..., K): class indices int64 where every
        factor is categorical, else float (a class index or a value per column)."""
        columns = torch.broadcast_tensors(*(values[n] for n in self.names))
        if self.schema.continuous:
            columns = tuple(c.float() for c in columns)
        return torch.stack(columns, dim=-1)

    def sample_factors(self, num: int, do: Mapping[str, Tensor] | None = None) -> Tensor:
        """Factor rows (num, K) drawn through the mechanisms with fresh noise (torch's RNG),
        the factors in `do` set to their (num,) or scalar values: the factor-level SCM alone."""
        device, values = self.device(), {}
        for name in self.order:
            if do is not None and name in do:
                values[name] = do[name].to(device).expand(num)
            elif name in self.flows:
                codes = self.parent_codes(name, values) if self.parents[name] else None
                codes = torch.zeros(num, 0, device=device) if codes is None else codes
                values[name] = self.flow(name)(torch.randn(num, device=device), codes)
            else:
                logits = cast(dist.Categorical, self.factor_dist(name, values)).logits
                values[name] = dist.Categorical(logits=logits.expand(num, -1)).sample()
        return self.stack(values)

    def device(self) -> torch.device:
        return next(self.parameters()).device
