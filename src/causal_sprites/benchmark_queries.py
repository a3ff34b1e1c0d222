"""The benchmark's query set: a fixed, seeded list of (held-out row, do()) pairs per data set,
single do() on every factor and joint do() of every pair, stored as JSONL with its sha256 so that
scores compare across versions and machines."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from causal_sprites.data.dataset import random_split
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError

#: Most queries one benchmark draws (each is answered several times per model).
MAX_QUERIES: Final = 100_000
#: The held-out split queries come from: the default run config's (`config.TrainConfig`).
TEST_FRACTION: Final = 0.05
SPLIT_SEED: Final = 0


@dataclass(frozen=True)
class QuerySet:
    """Queries in kind order: data rows (N,), the intervened factors of each kind, each query's
    kind (N,) and do() values {factor: (N,)} (nan where a query leaves the factor alone)."""

    rows: np.ndarray
    kinds: tuple[tuple[str, ...], ...]
    kind: np.ndarray
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.rows)

    def do(self, chosen: np.ndarray, schema: Schema) -> dict[str, np.ndarray]:
        """The do() of queries `chosen` (indices, all of one kind): {factor: values (B,)},
        int64 classes of a categorical factor, float64 values of a continuous one."""
        (kind,) = np.unique(self.kind[chosen])
        return {
            name: self.values[name][chosen].astype(
                np.int64 if schema.factor(name).kind == "categorical" else np.float64
            )
            for name in self.kinds[int(kind)]
        }

    def batches(self, size: int) -> list[np.ndarray]:
        """Query indices in batches of at most `size`, each of one kind."""
        out = []
        for k in range(len(self.kinds)):
            members = np.flatnonzero(self.kind == k)
            out += [members[i : i + size] for i in range(0, len(members), size)]
        return out

    def records(self, schema: Schema) -> list[dict[str, Any]]:
        """One JSON object per query: its row and do() as {factor: class index or value}."""
        out = []
        for q, row in enumerate(self.rows.tolist()):
            do = {n: self.values[n][q] for n in self.kinds[int(self.kind[q])]}
            out.append({"row": row, "do": as_json_values(schema, do)})
        return out

    def jsonl(self, schema: Schema) -> str:
        """The queries as JSON lines (keys sorted): the text their hash is taken of."""
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records(schema))

    def sha256(self, schema: Schema) -> str:
        return hashlib.sha256(self.jsonl(schema).encode()).hexdigest()


def as_json_values(schema: Schema, values: dict[str, float]) -> dict[str, int | float]:
    """{factor: value} as JSON writes them: a class index, or a continuous value."""
    return {
        n: int(v) if schema.factor(n).kind == "categorical" else float(v) for n, v in values.items()
    }


def query_kinds(schema: Schema) -> tuple[tuple[str, ...], ...]:
    """do() on each factor alone, then on each pair of factors."""
    names = schema.names
    return tuple((n,) for n in names) + tuple(itertools.combinations(names, 2))


def check_num_queries(num_queries: int) -> None:
    """Refuse in one line a number of queries outside 1..MAX_QUERIES (before any data loads)."""
    if not 1 <= num_queries <= MAX_QUERIES:
        raise CausalSpritesError(f"--queries must be 1 to {MAX_QUERIES:,}, got {num_queries:,}")


def draw_queries(data: Any, num_queries: int, seed: int = 0) -> QuerySet:
    """`num_queries` queries on held-out rows of `data` (the default run's random split), kinds
    taken in turn; a categorical factor sent to a random other class, a continuous one to a
    value uniform over its range."""
    check_num_queries(num_queries)
    schema: Schema = data.schema
    _, test_rows = random_split(len(data), TEST_FRACTION, SPLIT_SEED)
    rng = np.random.default_rng(seed)
    kinds = query_kinds(schema)
    kind = np.sort(np.arange(num_queries) % len(kinds))
    rows = rng.choice(test_rows, num_queries, replace=num_queries > len(test_rows))
    factual = np.asarray(data.factors(rows), np.float64)
    values = {}
    for column, factor in enumerate(schema.factors):
        if factor.kind == "categorical":
            drawn = (factual[:, column] + rng.integers(1, factor.size, num_queries)) % factor.size
        else:
            assert factor.low is not None and factor.high is not None
            drawn = rng.uniform(factor.low, factor.high, num_queries)
        used = np.array([factor.name in kinds[k] for k in kind])
        values[factor.name] = np.where(used, drawn, np.nan)
    return QuerySet(rows.astype(np.int64), kinds, kind, values)
