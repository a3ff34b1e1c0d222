"""The factor-level SCM as one object: a DAG over a dataset's factors with a Gumbel-max mechanism
per factor (Oberst & Sontag 2019): sampling from given noise, the noise posterior given observed
classes, prediction under do() with that noise, and Monte Carlo counterfactuals over it.

Built from a trained model's tables or from a variant's true ones (which also samples the variant
datasets), so the model and the truth answer the same counterfactual question the same way and
can be compared distribution to distribution.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.mechanisms import gumbel_max, gumbel_posterior


@dataclass(frozen=True)
class FactorGraph:
    """`parents[f]` (in factor order) and `log_tables[f]` (*parent sizes, K_f) float64 of each
    factor f, both keyed in factor order: the factors' names and sizes are the tables' own."""

    parents: Mapping[str, tuple[str, ...]]
    log_tables: Mapping[str, Tensor]

    @property
    def names(self) -> tuple[str, ...]:
        """The factors, in factor order."""
        return tuple(self.log_tables)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Classes per factor, in factor order."""
        return tuple(int(t.shape[-1]) for t in self.log_tables.values())

    @classmethod
    def from_tables(
        cls, parents: Mapping[str, tuple[str, ...]], tables: Mapping[str, np.ndarray | Tensor]
    ) -> FactorGraph:
        """From probability tables per factor (*parent sizes, K), in factor order; a factor
        without an entry in `parents` has none."""
        logs = {}
        for name, raw in tables.items():
            table = (
                raw.detach().cpu().double()
                if isinstance(raw, Tensor)
                else torch.tensor(np.array(raw, dtype=np.float64))
            )
            logs[name] = table.clamp_min(0).log()
        return cls({n: tuple(parents.get(n, ())) for n in logs}, logs)

    @classmethod
    def fit(
        cls,
        sizes: Mapping[str, int],
        parents: Mapping[str, tuple[str, ...]],
        classes: Tensor,
        smoothing: float = 0.1,
    ) -> FactorGraph:
        """Tables of smoothed frequencies of classes (N, K) of factors with `sizes` {factor:
        classes} (factor order): `smoothing` pseudo-counts per cell, so every log-probability
        stays finite (float64, on the CPU)."""
        names, logs = list(sizes), {}
        for name in names:
            columns = [names.index(p) for p in [*parents.get(name, ()), name]]
            shape = [sizes[names[c]] for c in columns]
            index = torch.zeros(len(classes), dtype=torch.long)
            for column, size in zip(columns, shape, strict=True):
                index = index * size + classes[:, column].long().cpu()
            counts = torch.zeros(math.prod(shape), dtype=torch.float64)
            counts = counts.index_add_(0, index, torch.ones(len(classes), dtype=torch.float64))
            counts = counts.view(shape) + smoothing
            logs[name] = (counts / counts.sum(-1, keepdim=True)).log()
        return cls({n: tuple(parents.get(n, ())) for n in names}, logs)

    def exact(self) -> FactorGraph:
        """A float64 CPU copy, each table row renormalised: for enumeration and comparisons."""
        logs = {
            n: torch.log_softmax(t.detach().cpu().double(), -1) for n, t in self.log_tables.items()
        }
        return FactorGraph(self.parents, logs)

    @property
    def order(self) -> list[str]:
        """Factors parents first (ties in factor order)."""
        return list(topological_order(self.parents))

    def descendants(self, names: set[str] | list[str]) -> set[str]:
        """Factors downstream of any of `names` (themselves excluded)."""
        found: set[str] = set()
        for name in self.order:
            if any(p in names or p in found for p in self.parents[name]):
                found.add(name)
        return found - set(names)

    def logits(self, name: str, values: Mapping[str, Tensor]) -> Tensor:
        """log p(name | parents) (..., K) for parent classes given in `values`."""
        index = tuple(values[p] for p in self.parents[name])
        return self.log_tables[name][index] if index else self.log_tables[name]

    def log_prob(self, classes: Tensor) -> Tensor:
        """log p(y) (N,) of class tuples (N, K) under the tables."""
        values = self.columns(classes)
        first = next(iter(self.log_tables.values()))
        return sum(
            (
                self.logits(name, values)
                .expand(len(classes), -1)
                .gather(-1, values[name][:, None])[:, 0]
                for name in self.names
            ),
            torch.zeros(len(classes), dtype=first.dtype, device=classes.device),
        )

    def columns(self, classes: Tensor) -> dict[str, Tensor]:
        """{factor: its column (...,)} of class tuples (..., K)."""
        return {n: classes[..., i] for i, n in enumerate(self.names)}

    def stack(self, values: Mapping[str, Tensor]) -> Tensor:
        """Class tuples (..., K) of {factor: (...,)}: the inverse of `columns`."""
        return torch.stack([values[n] for n in self.names], -1)

    def mechanism(self, name: str, values: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """Y_name = argmax_k(log p(k | parents) + G_k) for parent classes in `values` and Gumbel
        noise G (..., K): the one Gumbel-max mechanism that sampling and prediction share."""
        return gumbel_max(self.logits(name, values), noise)

    def sample(self, noise: Mapping[str, Tensor]) -> Tensor:
        """Classes (N, K) that noise {factor: (N, K_f)} gives, each factor from its parents."""
        values: dict[str, Tensor] = {}
        for name in self.order:
            values[name] = self.mechanism(name, values, noise[name])
        return self.stack(values)

    def abduct(
        self, classes: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Noise {factor: (B, K_f)} drawn from its exact posterior given classes (B, K): the
        Gumbel posterior of each factor given its observed class and its parents' (factor order)."""
        values = self.columns(classes)
        return {
            name: gumbel_posterior(
                self.logits(name, values).expand(len(classes), size), values[name], generator
            )
            for name, size in zip(self.names, self.sizes, strict=True)
        }

    def predict(
        self, classes: Tensor, noise: Mapping[str, Tensor], do: Mapping[str, int]
    ) -> Tensor:
        """Classes (B, K) under do {factor: class} with the noise {factor: (B, K_f)} of the
        factual classes (B, K): intervened factors fixed, their descendants recomputed, the rest
        kept."""
        values = self.columns(classes)
        values.update({n: torch.full_like(values[n], v) for n, v in do.items()})
        changed = self.descendants(list(do))
        for name in self.order:
            if name in changed:
                values[name] = self.mechanism(name, values, noise[name])
        return self.stack(values)

    def log_joint(self, do: Mapping[str, int] | None = None) -> Tensor:
        """log p(y) over the whole factor grid (`sizes`, e.g. (3, 6, 40, 32, 32)) by enumeration;
        with `do`, of the mutilated network: intervened factors cut from their parents and
        fixed."""
        names, sizes = self.names, self.sizes
        joint = torch.zeros(sizes, dtype=torch.float64)
        for axis, name in enumerate(names):
            if do is not None and name in do:
                table = torch.full((sizes[axis],), -math.inf, dtype=torch.float64)
                table[do[name]] = 0.0
                axes = [axis]
            else:
                table = self.log_tables[name]
                axes = [names.index(p) for p in self.parents[name]] + [axis]
            table = table.permute(sorted(range(len(axes)), key=axes.__getitem__))
            shape = [sizes[a] if a in axes else 1 for a in range(len(names))]
            joint = joint + table.reshape(shape)
        return joint

    def counterfactuals(
        self,
        factual: Tensor,
        do: Mapping[str, Tensor],
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Counterfactual classes (S, B, K) of factual classes (B, K) under do {factor: (B,)}:
        each descendant of an intervened factor keeps a draw of its Gumbel noise from the posterior
        given its factual class (abduction), is recomputed from its new parents with that noise
        (prediction); every other factor keeps its factual class."""
        batch = len(factual)
        values = {n: v.expand(num_samples, batch) for n, v in self.columns(factual).items()}
        for name, value in do.items():
            values[name] = value.to(factual.device).expand(num_samples, batch)
        changed = self.descendants(list(do))
        factual_values = self.columns(factual)
        for name in self.order:
            if name not in changed:
                continue
            logits = self.logits(name, factual_values)
            noise = gumbel_posterior(
                logits.expand(batch, logits.shape[-1]),
                factual_values[name],
                generator,
                num_samples=num_samples,
            )
            values[name] = self.mechanism(name, values, noise)
        return self.stack(values)


#: Training rows a table needs per cell (parent row x class) to be learned by counting.
ROWS_PER_CELL = 5


def needs_network(parent_sizes: Sequence[int], size: int, num_rows: int) -> bool:
    """Whether a factor's conditional table has more cells (parent rows x its classes) than
    `num_rows` training rows can fill, ROWS_PER_CELL each: a 40-class parent leaves one or two
    samples a row. Such a factor's mechanism is then a network of its parents."""
    return bool(parent_sizes) and ROWS_PER_CELL * math.prod(parent_sizes) * size > num_rows


def parents_from_edges(
    edges: Collection[tuple[str, str]], names: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """{factor: its parents in factor order} of (parent, child) edges over the factors `names`;
    an unknown name is refused."""
    for edge in edges:
        for name in edge:
            if name not in names:
                raise CausalSpritesError(
                    f"unknown factor {name!r} in graph; factors are {', '.join(names)}"
                )
    return {child: tuple(p for p in names if (p, child) in set(edges)) for child in names}


def topological_order(
    parents: Mapping[str, Collection[str]], cycle: str = "the edges have a cycle through"
) -> tuple[str, ...]:
    """The factors (the keys of {factor: parents}, every factor one) in a topological order (ties
    in factor order); a cycle raises `cycle` followed by the factors on or behind it."""
    order: list[str] = []
    remaining = list(parents)
    while remaining:
        ready = [n for n in remaining if all(p in order for p in parents.get(n, ()))]
        if not ready:
            raise CausalSpritesError(f"{cycle} {', '.join(remaining)}")
        order.append(ready[0])
        remaining.remove(ready[0])
    return tuple(order)


def restrict(log_joint: Tensor, evidence: Mapping[str, int], names: Sequence[str]) -> Tensor:
    """The normalised log joint over the grid of factors `names` given evidence {factor:
    class}; zero probability is refused."""
    mask = torch.zeros(log_joint.shape, dtype=torch.bool)
    index = tuple(evidence.get(name, slice(None)) for name in names)
    mask[index] = True
    restricted = log_joint.masked_fill(~mask, -math.inf)
    total = torch.logsumexp(restricted.reshape(-1), 0)
    if not bool(torch.isfinite(total)):
        given = ", ".join(f"{k}={v}" for k, v in evidence.items())
        raise CausalSpritesError(f"{given} has probability zero under the model")
    return restricted - total


def marginals(log_joint: Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-factor marginal probabilities (K_f,) of a normalised log joint over the grid of the
    factors `names`."""
    out = {}
    for axis, name in enumerate(names):
        others = [a for a in range(len(names)) if a != axis]
        out[name] = torch.logsumexp(log_joint, dim=others).exp().numpy()
    return out


def sample_grid(log_joint: Tensor, num_samples: int) -> Tensor:
    """Class tuples (N, K) drawn from a normalised log joint over the factor grid."""
    flat = torch.multinomial(log_joint.reshape(-1).exp(), num_samples, replacement=True)
    return torch.as_tensor(np.stack(np.unravel_index(flat.numpy(), log_joint.shape), -1))
