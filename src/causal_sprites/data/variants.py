"""Causal dSprites variants: a factor-level Gumbel-max SCM (Oberst & Sontag 2019) samples dSprites
images with dependent factors and records every sample's exogenous noise, so the true
counterfactual of any sample under any do() is known (same noise, new mechanisms, the new image).
The SCM is the package's one `FactorGraph`; this module reads specs and writes and reads the files.
"""

from __future__ import annotations

import functools
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import yaml

from causal_sprites.data.factors import (
    FACTORS,
    SIZES,
    classes_to_values,
    normalize_assignments,
)
from causal_sprites.data.render import metadata, render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.runs import atomic_path
from causal_sprites.scm.graph import FactorGraph, topological_order
from causal_sprites.scm.mechanisms import sample_gumbels

SIZE: Final = dict(zip(FACTORS, SIZES, strict=True))
NOISE_PREFIX: Final = "noise_"
_SPEC_KEYS: Final = {"name", "num_samples", "seed", "edges", "mechanisms", "description"}


@dataclass(frozen=True, eq=False)
class VariantSpec:
    """A validated factor-level SCM: each factor's parents and its table (*parent sizes, K)."""

    name: str
    num_samples: int
    seed: int
    parents: dict[str, tuple[str, ...]]
    tables: dict[str, np.ndarray]
    description: str = ""

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """(parent, child) pairs, children in factor order."""
        return tuple((p, child) for child in FACTORS for p in self.parents[child])

    @functools.cached_property
    def graph(self) -> FactorGraph:
        """The spec as the package's factor-level SCM. Logs are taken in numpy, as the variant
        files were always sampled, so the same seed keeps giving the same data bit for bit."""
        with np.errstate(divide="ignore"):
            logs = {n: torch.from_numpy(np.log(t)) for n, t in self.tables.items()}
        return FactorGraph(self.parents, logs)

    @property
    def order(self) -> tuple[str, ...]:
        """The factors in a topological order (ties in factor order)."""
        return tuple(self.graph.order)

    def graph_string(self) -> str:
        """The edges as `train --graph` takes them: `"shape->scale,scale->posX"`."""
        return ",".join(f"{p}->{c}" for p, c in self.edges)

    def descendants(self, names: Sequence[str]) -> set[str]:
        """Proper descendants of the given factors (the given ones themselves excluded)."""
        return self.graph.descendants(list(names))

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (helpers expanded into tables); `parse_spec` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "edges": [list(edge) for edge in self.edges],
            "mechanisms": {
                node: {"parents": list(self.parents[node]), "table": self.tables[node].tolist()}
                for node in FACTORS
                if self.parents[node] or not _is_uniform(self.tables[node])
            },
        }


def _is_uniform(table: np.ndarray) -> bool:
    return bool(np.allclose(table, 1.0 / table.shape[-1], rtol=0, atol=1e-15))


def _factor(name: Any, where: str) -> str:
    if name not in FACTORS:
        raise CausalSpritesError(
            f"unknown factor {name!r} in {where}; factors are {', '.join(FACTORS)}"
        )
    return str(name)


def _integer(raw: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CausalSpritesError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def shift_table(parents: Sequence[str], node: str, strength: float) -> np.ndarray:
    """The `shift` helper's table (*parent sizes, K): a bump over the node's classes centred at
    the mean relative position of the parents, standard deviation 1 / (4 strength) of the range."""
    if not parents:
        raise CausalSpritesError(f"shift mechanism of {node} needs at least one parent")
    grids = np.meshgrid(*[(np.arange(SIZE[p]) + 0.5) / SIZE[p] for p in parents], indexing="ij")
    centre = np.mean(grids, axis=0)[..., None]
    u = (np.arange(SIZE[node]) + 0.5) / SIZE[node]
    logits = -8.0 * strength**2 * (u - centre) ** 2
    table = np.exp(logits - logits.max(-1, keepdims=True))
    return table / table.sum(-1, keepdims=True)


def _table(node: str, parents: tuple[str, ...], entry: Mapping[str, Any]) -> np.ndarray:
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
        return shift_table(parents, node, float(strength))
    expected = (*[SIZE[p] for p in parents], SIZE[node])
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


def parse_spec(raw: Any, default_name: str = "variant") -> VariantSpec:
    """Validate a spec mapping (the parsed YAML/JSON) into a VariantSpec.

    Keys: `name`, `num_samples` (>= 1), `seed`, `description`, `edges` ([parent, child] pairs, a
    DAG) and `mechanisms` ({node: {parents: [...], table: ...}}; a node without an entry is
    uniform; `parents` defaults to the edges into the node, in their order). A table has the
    shape (*parent sizes, node size), entries >= 0; each row is normalised, so weights will do.
    Instead of `table`, `shift: {strength: s}` is a discretised Gaussian bump over the node's
    classes that follows its parents: class k sits at u_k = (k + 0.5) / K, the centre is the mean
    of the parents' u = (v + 0.5) / K_parent, and p(k | parents) is proportional to
    exp(-8 s^2 (u_k - centre)^2): standard deviation 1 / (4 s) of the range, uniform at s = 0.
    """
    if not isinstance(raw, Mapping):
        raise CausalSpritesError(f"a variant spec must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise CausalSpritesError(f"unknown spec keys {', '.join(map(str, unknown))}")
    name = str(raw.get("name", default_name))
    num_samples = _integer(raw, "num_samples", None, 1)
    seed = _integer(raw, "seed", 0, 0)
    edges = raw.get("edges") or []
    parents: dict[str, list[str]] = {n: [] for n in FACTORS}
    if not isinstance(edges, list):
        raise CausalSpritesError("edges must be a list of [parent, child] pairs")
    for edge in edges:
        if not isinstance(edge, list | tuple) or len(edge) != 2:
            raise CausalSpritesError(f"bad edge {edge!r}: expected [parent, child]")
        parent, child = _factor(edge[0], "edges"), _factor(edge[1], "edges")
        if parent == child or parent in parents[child]:
            raise CausalSpritesError(f"edge {parent} -> {child} is a self-loop or given twice")
        parents[child].append(parent)
    topological_order(parents)
    mechanisms = raw.get("mechanisms") or {}
    if not isinstance(mechanisms, Mapping):
        raise CausalSpritesError("mechanisms must be a mapping from factor to mechanism")
    tables = {n: np.full(SIZE[n], 1.0 / SIZE[n]) for n in FACTORS}
    for node, entry in mechanisms.items():
        node = _factor(node, "mechanisms")
        if not isinstance(entry, Mapping):
            raise CausalSpritesError(f"mechanism of {node} must be a mapping")
        given = entry.get("parents", parents[node])
        if not isinstance(given, list | tuple):
            raise CausalSpritesError(f"parents of {node} must be a list")
        given = [_factor(p, f"parents of {node}") for p in given]
        if sorted(given) != sorted(parents[node]) or len(set(given)) != len(given):
            raise CausalSpritesError(
                f"parents of {node} are [{', '.join(given)}] but the edges into it are "
                f"[{', '.join(parents[node])}]"
            )
        parents[node] = given
        tables[node] = _table(node, tuple(given), entry)
    missing = [n for n in FACTORS if parents[n] and n not in mechanisms]
    if missing:
        raise CausalSpritesError(f"{missing[0]} has parents in edges but no mechanism")
    return VariantSpec(
        name=name,
        num_samples=num_samples,
        seed=seed,
        parents={n: tuple(p) for n, p in parents.items()},
        tables=tables,
        description=str(raw.get("description", "")),
    )


def load_spec(path: Path | str) -> VariantSpec:
    """Read and validate a YAML or JSON spec file."""
    path = Path(path)
    if not path.is_file():
        raise CausalSpritesError(f"no such spec file: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise CausalSpritesError(f"{path}: bad YAML{line}") from None
    except UnicodeDecodeError:
        raise CausalSpritesError(f"{path}: not a text file") from None
    try:
        return parse_spec(raw, default_name=path.stem)
    except CausalSpritesError as error:
        raise CausalSpritesError(f"{path}: {error}") from None


# --- the mechanisms, numpy in and out of the FactorGraph --------------------------------------


def _classes(classes: np.ndarray) -> torch.Tensor:
    """Factor classes (B, 5) int64 of (B, 5) or (B, 6) (color first) integer classes."""
    return torch.from_numpy(np.array(np.asarray(classes)[:, -len(FACTORS) :], dtype=np.int64))


def _noise(noise: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Noise arrays {factor: (B, K)} as tensors (other keys dropped), dtype kept."""
    return {n: torch.as_tensor(np.asarray(v)) for n, v in noise.items() if n in SIZE}


def mechanism(spec: VariantSpec, node: str, classes: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Y_node = argmax_k(log table[parents] + G): classes (B, 5) (parents read), noise (B, K)
    -> (B,) int64, by the FactorGraph's mechanism (float32 noise is added in float64)."""
    columns = _classes(classes)
    values = {n: columns[:, i] for i, n in enumerate(FACTORS)}
    return spec.graph.mechanism(node, values, torch.as_tensor(np.asarray(noise))).numpy()


def sample_classes(spec: VariantSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample the SCM: factor classes (N, 5) int64 and the Gumbel noise {factor: (N, K) float32}."""
    generator = torch.Generator().manual_seed(spec.seed)
    num = spec.num_samples
    noise = {n: sample_gumbels((num, SIZE[n]), generator).numpy() for n in FACTORS}
    return spec.graph.sample(_noise(noise)).numpy(), noise


def sample_variant(spec: VariantSpec, out: Path | str) -> Path:
    """Sample the variant and write it atomically as an official-format .npz (imgs, latents_classes,
    latents_values, metadata) plus `noise_<factor>` (N, K) float32 and `spec` (JSON text)."""
    classes, noise = sample_classes(spec)
    unique, inverse = np.unique(classes, axis=0, return_inverse=True)
    images = render(unique)[inverse.reshape(-1)]
    full = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], axis=1)
    info = {**metadata(), "title": f"causal dSprites variant {spec.name}"}
    arrays: dict[str, Any] = {
        "imgs": images,
        "latents_classes": full,
        "latents_values": classes_to_values(full),
        "metadata": np.array(json.dumps(info)),
        "spec": np.array(json.dumps(spec.to_dict())),
        **{NOISE_PREFIX + n: v for n, v in noise.items()},
    }
    out = Path(out)
    with atomic_path(out) as temporary, temporary.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return out


def read_variant(path: Path | str) -> tuple[VariantSpec, dict[str, np.ndarray]]:
    """The spec and recorded noise {factor: (N, K) float32} of a variant file (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise CausalSpritesError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            needed = {"spec", *(NOISE_PREFIX + n for n in FACTORS)}
            if not needed <= keys:
                raise CausalSpritesError(
                    f"{path} is not a causal variant (no recorded spec and noise)"
                )
            spec = parse_spec(json.loads(str(archive["spec"])))
            noise = {n: archive[NOISE_PREFIX + n] for n in FACTORS}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CausalSpritesError(f"{path}: cannot read variant ({error})") from None
    for n in FACTORS:
        if noise[n].shape != (spec.num_samples, SIZE[n]):
            raise CausalSpritesError(f"{path}: noise_{n} has shape {noise[n].shape}")
    return spec, noise


def variant_of(path: Path | str | None) -> tuple[VariantSpec, dict[str, np.ndarray]] | None:
    """(spec, recorded noise) when `path` is a causal variant file, None when it is plain
    dSprites (an official .npz or .hdf5 without a recorded spec); a file that claims to be a
    variant but cannot be read is an error, never silently plain dSprites."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise CausalSpritesError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            is_variant = "spec" in archive.files
    except (OSError, ValueError, zipfile.BadZipFile):
        return None  # not an npz archive (the .hdf5 twin): no recorded noise
    return read_variant(path) if is_variant else None


def true_counterfactual(
    spec: VariantSpec,
    noise: Mapping[str, np.ndarray],
    classes: np.ndarray,
    do: Mapping[str, int | str],
) -> tuple[np.ndarray, np.ndarray]:
    """The variant's true counterfactual of observed classes (B, 5) (or (B, 6)) with their noise
    {factor: (B, K)} under `do`: intervened factors fixed, their descendants recomputed with the
    same noise, the rest kept. Returns classes (B, 5) int64 and images (B, 64, 64) uint8."""
    values = normalize_assignments(do)
    factual = _classes(classes)
    for node, n in noise.items():
        if node in SIZE and np.shape(n) != (len(factual), SIZE[node]):
            raise CausalSpritesError(
                f"noise of {node} has shape {np.shape(n)}, expected ({len(factual)}, {SIZE[node]})"
            )
    cf = spec.graph.predict(factual, _noise(noise), values).numpy()
    return cf, render(cf)


def abduct_noise(spec: VariantSpec, classes: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Noise {factor: (B, K)} drawn from its exact posterior given observed classes (B, 5) under the
    variant's own tables: what a perfect model knows of the noise, as against the recording.

    Fed to `true_counterfactual`, it gives a perfect model's counterfactual; compared with the
    recorded truth it shows how much of a counterfactual the observation determines: a descendant
    of the intervened factor is only known in distribution when its mechanism is stochastic."""
    generator = torch.Generator().manual_seed(seed)
    return {n: v.numpy() for n, v in spec.graph.abduct(_classes(classes), generator).items()}


# --- exact distributions, the truth for the distribution metrics -------------------------------


def joint(spec: VariantSpec, do: Mapping[str, int | str] | None = None) -> np.ndarray:
    """P(shape, scale, orientation, posX, posY) as a (3, 6, 40, 32, 32) array, under `do` if given
    (the intervened factors' tables replaced by point masses): the FactorGraph's joint."""
    return spec.graph.log_joint(normalize_assignments(do or {})).exp().numpy()


def distribution(
    spec: VariantSpec,
    target: str,
    given: Mapping[str, int | str] | None = None,
    do: Mapping[str, int | str] | None = None,
) -> np.ndarray:
    """Exact P(target | given, do(...)) as a (K,) array."""
    target = _factor(target, "distribution")
    p = joint(spec, do)
    for name, value in normalize_assignments(given or {}).items():
        index = [slice(None)] * len(FACTORS)
        index[FACTORS.index(name)] = slice(value, value + 1)
        p = p[tuple(index)]
    axis = FACTORS.index(target)
    marginal = p.sum(axis=tuple(i for i in range(len(FACTORS)) if i != axis))
    total = marginal.sum()
    if total <= 0:
        raise CausalSpritesError("the conditioning event has probability zero")
    return marginal / total
