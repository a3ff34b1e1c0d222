"""Variant specs: a factor-level Gumbel-max SCM (Oberst & Sontag 2019) over the factors of a base
dataset, read from YAML or JSON and validated into a `VariantSpec`. The base is dSprites unless
the spec's `dataset` names another data file; the factors' names, sizes and class names are that
data's schema. `data/variants.py` samples specs and reads and writes the variant files.

On dSprites a spec may also make scale, orientation, posX and posY continuous (a
`ContinuousSpec`, `data/continuous_spec.py`; sampled by `data/continuous_variants.py`):

    mechanisms:
      scale: {range: [0.5, 1.0], sigmoid: {noise_scale: 1.5}}            # a root: logit-normal
      posX:
        range: [0.0, 1.0]                  # required, within what the renderer draws
        unit: ""                           # optional
        sigmoid: {intercept: -3, weights: {scale: 6}, noise_scale: 1}
      posY:
        range: [0.0, 1.0]
        sigmoid: {intercept: 0, weights: {posX: -4, shape: [0, 1, 2]}, noise_scale: 1}

value = low + (high - low) * sigmoid(intercept + sum(weight * parent) + noise_scale * U), U ~
Normal(0, 1); a continuous parent enters normalised to [0, 1] over its range (weights are
unitless), a categorical parent adds its class's weight (a list, one per class). Categorical
factors keep their tables (their parents categorical) and dSprites' classes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import yaml

from causal_sprites.data.combinations import Combinations
from causal_sprites.data.continuous_spec import (
    ContinuousSpec,
    Sigmoid,
    SpecDag,
    continuous_factor,
    continuous_schema,
    is_continuous_entry,
    parse_sigmoid,
)
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.load import load_data
from causal_sprites.data.pendulum import SCHEMA as PENDULUM
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.graph import FactorGraph, topological_order

_SPEC_KEYS: Final = {"name", "num_samples", "seed", "edges", "mechanisms", "description", "dataset"}


@dataclass(frozen=True, eq=False)
class VariantSpec(SpecDag):
    """A validated factor-level SCM over the factors of `schema`: each factor's parents and its
    table (*parent sizes, K). `dataset` is the base data file whose images the samples are (None:
    dSprites, drawn by the generator)."""

    name: str
    num_samples: int
    seed: int
    parents: dict[str, tuple[str, ...]]
    tables: dict[str, np.ndarray]
    schema: Schema
    description: str = ""
    dataset: Path | None = None
    #: The base data when it was loaded already (to read its schema), so it is loaded once.
    loaded: DSprites | Dataset | None = field(default=None, repr=False)

    @functools.cached_property
    def graph(self) -> FactorGraph:
        """The spec as the package's factor-level SCM. Logs are taken in numpy, as the variant
        files were always sampled, so the same seed keeps giving the same data bit for bit."""
        with np.errstate(divide="ignore"):
            logs = {n: torch.from_numpy(np.log(t)) for n, t in self.tables.items()}
        return FactorGraph(self.parents, logs)

    @functools.cached_property
    def base(self) -> DSprites | Dataset:
        """The base data whose images the samples are (loaded once); a dSprites spec has none."""
        if self.dataset is None:
            raise CausalSpritesError(f"variant {self.name} draws dSprites: it has no base file")
        if self.loaded is not None:
            return self.loaded
        if not self.dataset.is_file():
            raise CausalSpritesError(
                f"variant {self.name}: its base dataset {self.dataset} is missing (a variant's "
                "truth is the base's images: keep the base where the variant file names it)"
            )
        return load_data(self.dataset)

    @functools.cached_property
    def index(self) -> Combinations:
        """The base's rows by factor combination (built once; every combination must be there)."""
        return Combinations.of(self.base, self.schema, f"the base dataset {self.dataset}")

    def descendants(self, names: Sequence[str]) -> set[str]:
        """Proper descendants of the given factors (the given ones themselves excluded)."""
        return self.graph.descendants(list(names))

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (helpers expanded into tables, the base's path absolute);
        `parse_spec` reads it back."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "edges": [list(edge) for edge in self.edges],
            "mechanisms": self.table_entries(),
        }
        if self.dataset is not None:  # absent for dSprites: its variant files stay as they were
            out["dataset"] = str(self.dataset)
        return out


def _factor(name: Any, where: str, schema: Schema) -> str:
    if name not in schema.names:
        raise CausalSpritesError(
            f"unknown factor {name!r} in {where}; factors are {', '.join(schema.names)}"
        )
    return str(name)


def _integer(raw: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CausalSpritesError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def shift_table(
    parents: Sequence[str], node: str, strength: float, sizes: Mapping[str, int]
) -> np.ndarray:
    """The `shift` helper's table (*parent sizes, K) over factors of `sizes` {factor: classes}:
    a bump over the node's classes centred at the mean relative position of the parents,
    standard deviation 1 / (4 strength) of the range."""
    if not parents:
        raise CausalSpritesError(f"shift mechanism of {node} needs at least one parent")
    grids = np.meshgrid(*[(np.arange(sizes[p]) + 0.5) / sizes[p] for p in parents], indexing="ij")
    centre = np.mean(grids, axis=0)[..., None]
    u = (np.arange(sizes[node]) + 0.5) / sizes[node]
    logits = -8.0 * strength**2 * (u - centre) ** 2
    table = np.exp(logits - logits.max(-1, keepdims=True))
    return table / table.sum(-1, keepdims=True)


def _table(
    node: str, parents: tuple[str, ...], entry: Mapping[str, Any], sizes: Mapping[str, int]
) -> np.ndarray:
    """A mechanism entry's normalised table (*parent sizes, K)."""
    if ("table" in entry) == ("shift" in entry):
        raise CausalSpritesError(f"mechanism of {node} needs exactly one of 'table' or 'shift'")
    if "shift" in entry:
        shift = entry["shift"]
        strength = shift.get("strength") if isinstance(shift, Mapping) else None
        if isinstance(strength, bool) or not isinstance(strength, int | float) or strength < 0:
            raise CausalSpritesError(
                f"shift of {node} needs a number 'strength' >= 0, got {strength!r}"
            )
        return shift_table(parents, node, float(strength), sizes)
    expected = (*[sizes[p] for p in parents], sizes[node])
    try:
        table = np.array(entry["table"], dtype=np.float64)
    except (ValueError, TypeError):
        raise CausalSpritesError(
            f"table of {node} is not a rectangular array of numbers; expected shape {expected}"
        ) from None
    if table.shape != expected:
        names = " x ".join([*parents, node])
        raise CausalSpritesError(
            f"table of {node} has shape {table.shape}, expected {expected} ({names})"
        )
    if not np.isfinite(table).all():
        raise CausalSpritesError(f"table of {node} has non-finite entries")
    if (table < 0).any():
        raise CausalSpritesError(f"table of {node} has negative entries")
    totals = table.sum(-1, keepdims=True)
    if (totals <= 0).any():
        row = tuple(int(i) for i in np.argwhere(totals[..., 0] <= 0)[0])
        raise CausalSpritesError(f"table of {node} has a row summing to 0 at parents {row}")
    return table / totals


def _base(
    raw: Mapping[str, Any], root: Path | None, schema: Schema | None
) -> tuple[Path | None, Schema, DSprites | Dataset | None]:
    """The spec's base file (its `dataset`, relative to `root`), the factors' schema (the one
    given, a variant file's own, else the base's, which is then loaded) and the loaded base;
    dSprites' schema without a `dataset`."""
    dataset = raw.get("dataset")
    loaded = None
    if dataset is None:
        return None, DSprites.schema, None
    if not isinstance(dataset, str) or not dataset:
        raise CausalSpritesError(f"dataset must be the path of a data file, got {dataset!r}")
    path = Path(dataset).expanduser()
    path = (root / path if root is not None and not path.is_absolute() else path).resolve()
    if schema is None:
        if not path.is_file():
            raise CausalSpritesError(f"dataset {path}: no such file")
        loaded = load_data(path)
        schema = loaded.schema
    continuous = [f.name for f in schema.factors if f.kind != "categorical"]
    if continuous:
        raise CausalSpritesError(
            f"factor {continuous[0]} of {schema.name} is continuous: continuous mechanisms are "
            "not supported in variants yet of a base dataset (only of dSprites)"
        )
    return path, schema, loaded


def _continuous(raw: Mapping[str, Any], name: str) -> Schema | None:
    """dSprites' schema with the factors the spec's mechanisms declare continuous (a `range`
    or a `sigmoid`), None when it declares none."""
    mechanisms = raw.get("mechanisms") or {}
    if not isinstance(mechanisms, Mapping):
        raise CausalSpritesError("mechanisms must be a mapping from factor to mechanism")
    factors = {
        _factor(node, "mechanisms", DSprites.schema): entry
        for node, entry in mechanisms.items()
        if is_continuous_entry(entry)
    }
    if not factors:
        return None
    if raw.get("dataset") is not None:
        raise CausalSpritesError(
            "continuous mechanisms draw dSprites' sprites (at any value): drop `dataset`"
        )
    return continuous_schema(name, {n: continuous_factor(n, e) for n, e in factors.items()})


def _parents(raw: Mapping[str, Any], schema: Schema) -> dict[str, list[str]]:
    """{factor: its parents in the order of the edges} of the spec's `edges` (a DAG)."""
    edges = raw.get("edges") or []
    parents: dict[str, list[str]] = {n: [] for n in schema.names}
    if not isinstance(edges, list):
        raise CausalSpritesError("edges must be a list of [parent, child] pairs")
    for edge in edges:
        if not isinstance(edge, list | tuple) or len(edge) != 2:
            raise CausalSpritesError(f"bad edge {edge!r}: expected [parent, child]")
        parent, child = _factor(edge[0], "edges", schema), _factor(edge[1], "edges", schema)
        if parent == child or parent in parents[child]:
            raise CausalSpritesError(f"edge {parent} -> {child} is a self-loop or given twice")
        parents[child].append(parent)
    topological_order(parents)
    return parents


def parse_any(
    raw: Any,
    default_name: str = "variant",
    *,
    root: Path | None = None,
    schema: Schema | None = None,
) -> VariantSpec | ContinuousSpec:
    """Validate a spec mapping (the parsed YAML/JSON) into a VariantSpec, or a ContinuousSpec
    where a mechanism declares a continuous factor (see the module docstring).

    Keys: `name`, `num_samples` (>= 1), `seed`, `description`, `dataset` (the base data file,
    relative to `root`; absent: dSprites), `edges` ([parent, child] pairs, a DAG) and
    `mechanisms` ({node: {parents: [...], table: ...}}; a node without an entry is uniform;
    `parents` defaults to the edges into the node, in their order). Factors are the base's
    (`schema` when given, else read from the base). A table has the shape (*parent sizes, node
    size), entries >= 0; each row is normalised, so weights will do. Instead of `table`,
    `shift: {strength: s}` is a discretised Gaussian bump over the node's classes that follows
    its parents: class k sits at u_k = (k + 0.5) / K, the centre is the mean of the parents'
    u = (v + 0.5) / K_parent, and p(k | parents) is proportional to exp(-8 s^2 (u_k - centre)^2):
    standard deviation 1 / (4 s) of the range, uniform at s = 0.
    """
    if not isinstance(raw, Mapping):
        raise CausalSpritesError(f"a variant spec must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise CausalSpritesError(f"unknown spec keys {', '.join(map(str, unknown))}")
    name = str(raw.get("name", default_name))
    continuous = _continuous(raw, name)
    if continuous is None:
        dataset, schema, loaded = _base(raw, root, schema)
    else:
        dataset, schema, loaded = None, continuous, None
    num_samples = _integer(raw, "num_samples", None, 1)
    seed = _integer(raw, "seed", 0, 0)
    parents = _parents(raw, schema)
    mechanisms = raw.get("mechanisms") or {}
    sizes = {f.name: f.size for f in schema.factors if f.kind == "categorical"}
    for node in sizes:
        outside = [p for p in parents[node] if p not in sizes]
        if outside:
            raise CausalSpritesError(
                f"categorical factor {node} has the continuous parent {outside[0]}: a "
                "categorical factor's parents must be categorical"
            )
    tables = {n: np.full(k, 1.0 / k) for n, k in sizes.items()}
    sigmoids: dict[str, Sigmoid] = {}
    for node, entry in mechanisms.items():
        node = _factor(node, "mechanisms", schema)
        if not isinstance(entry, Mapping):
            raise CausalSpritesError(f"mechanism of {node} must be a mapping")
        if node not in sizes:
            sigmoids[node] = parse_sigmoid(node, entry, tuple(parents[node]), schema)
            continue
        given = entry.get("parents", parents[node])
        if not isinstance(given, list | tuple):
            raise CausalSpritesError(f"parents of {node} must be a list")
        given = [_factor(p, f"parents of {node}", schema) for p in given]
        if sorted(given) != sorted(parents[node]) or len(set(given)) != len(given):
            raise CausalSpritesError(
                f"parents of {node} are [{', '.join(given)}] but the edges into it are "
                f"[{', '.join(parents[node])}]"
            )
        parents[node] = given
        tables[node] = _table(node, tuple(given), entry, sizes)
    missing = [n for n in schema.names if parents[n] and n not in mechanisms]
    if missing:
        raise CausalSpritesError(f"{missing[0]} has parents in edges but no mechanism")
    header = (name, num_samples, seed, {n: tuple(p) for n, p in parents.items()}, tables)
    description = str(raw.get("description", ""))
    if continuous is not None:
        return ContinuousSpec(*header, sigmoids, schema, description)
    return VariantSpec(*header, schema, description, dataset, loaded)


def parse_spec(
    raw: Any,
    default_name: str = "variant",
    *,
    root: Path | None = None,
    schema: Schema | None = None,
) -> VariantSpec:
    """`parse_any` of a categorical spec (a Gumbel-max SCM over the base's classes, all of
    whose factors are categorical); a spec with continuous mechanisms is refused."""
    return _categorical(parse_any(raw, default_name, root=root, schema=schema))


def _categorical(spec: VariantSpec | ContinuousSpec, where: str = "") -> VariantSpec:
    """The spec, refused where it is continuous (`where`: what the error starts with)."""
    if isinstance(spec, ContinuousSpec):
        raise CausalSpritesError(
            f"{where}{spec.schema.continuous[0]} has a continuous mechanism: expected a "
            "categorical variant spec (`causal-sprites data variant` samples continuous ones)"
        )
    return spec


def _read(path: Path) -> Any:
    """A spec file's YAML or JSON content (one-line errors)."""
    if not path.is_file():
        raise CausalSpritesError(f"no such spec file: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise CausalSpritesError(f"{path}: bad YAML{line}") from None
    except UnicodeDecodeError:
        raise CausalSpritesError(f"{path}: not a text file") from None


def load_any(path: Path | str) -> VariantSpec | ContinuousSpec:
    """Read and validate a YAML or JSON spec file (its `dataset` relative to the file),
    categorical or continuous."""
    path = Path(path)
    raw = _read(path)
    try:
        return parse_any(raw, default_name=path.stem, root=path.parent)
    except CausalSpritesError as error:
        raise CausalSpritesError(f"{path}: {error}") from None


def load_spec(path: Path | str) -> VariantSpec:
    """Read and validate a categorical YAML or JSON spec file (`load_any`)."""
    return _categorical(load_any(path), f"{path}: ")


def load_graph(path: Path | str) -> tuple[tuple[str, str], ...]:
    """The (parent, child) edges of a spec file: a variant's (categorical or continuous), or a
    generated set's true graph (`dataset: pendulum`, edges only:
    `examples/variants/pendulum.yaml`), for `discover --truth` and `train --graph-from`."""
    path = Path(path)
    raw = _read(path)
    if isinstance(raw, Mapping) and raw.get("dataset") == "pendulum":
        edges = raw.get("edges") or []
        for edge in edges:
            if not (isinstance(edge, list) and len(edge) == 2):
                raise CausalSpritesError(f"{path}: an edge must be [parent, child], got {edge!r}")
            for name in edge:
                PENDULUM.factor(str(name))
        return tuple((str(a), str(b)) for a, b in edges)
    return load_any(path).edges
