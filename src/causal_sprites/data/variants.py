"""Causal variants of a dataset: a factor-level Gumbel-max SCM (Oberst & Sontag 2019, specs in
`data/variant_spec.py`) samples images of a base dataset with dependent factors and records every
sample's exogenous noise, so the true counterfactual of any sample under any do() is known (same
noise, new mechanisms, the base's image at the new classes). On dSprites the images are drawn by
the generator; any other base must hold every factor combination. The SCM is the package's one
`FactorGraph`; this module samples specs and writes and reads the files.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from causal_sprites.data.dataset import chunk_rows, write_dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.render import metadata, render
from causal_sprites.data.schema import Schema
from causal_sprites.data.variant_spec import VariantSpec, load_spec, parse_spec, shift_table
from causal_sprites.errors import CausalSpritesError
from causal_sprites.runs import atomic_path
from causal_sprites.scm.mechanisms import sample_gumbels

__all__ = [
    "BASE_ROW",
    "NOISE_PREFIX",
    "VariantSpec",
    "abduct_noise",
    "counterfactual_classes",
    "distribution",
    "joint",
    "load_spec",
    "mechanism",
    "parse_spec",
    "read_variant",
    "sample_classes",
    "sample_variant",
    "shift_table",
    "true_candidates",
    "true_counterfactual",
    "true_images",
    "variant_of",
]

NOISE_PREFIX: Final = "noise_"
#: A variant dataset file's extra array: each sample's row in the base dataset (N,) int64.
BASE_ROW: Final = "base_row"


# --- the mechanisms, numpy in and out of the FactorGraph --------------------------------------


def _classes(spec: VariantSpec, classes: np.ndarray) -> torch.Tensor:
    """Factor classes (B, K) int64 of (B, K) classes, or of (B, K + 1) with dSprites' color."""
    count = len(spec.schema.factors)
    return torch.from_numpy(np.array(np.asarray(classes)[:, -count:], dtype=np.int64))


def _noise(spec: VariantSpec, noise: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Noise arrays {factor: (B, K)} as tensors (other keys dropped), dtype kept."""
    names = spec.schema.names
    return {n: torch.as_tensor(np.asarray(v)) for n, v in noise.items() if n in names}


def mechanism(spec: VariantSpec, node: str, classes: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Y_node = argmax_k(log table[parents] + G): classes (B, K) (parents read), noise (B, K_node)
    -> (B,) int64, by the FactorGraph's mechanism (float32 noise is added in float64)."""
    columns = _classes(spec, classes)
    values = {n: columns[:, i] for i, n in enumerate(spec.schema.names)}
    return spec.graph.mechanism(node, values, torch.as_tensor(np.asarray(noise))).numpy()


def sample_classes(spec: VariantSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample the SCM: factor classes (N, K) int64 and the Gumbel noise {factor: (N, K_f)}
    float32, drawn factor by factor in schema order from a generator seeded with the spec's."""
    generator = torch.Generator().manual_seed(spec.seed)
    num = spec.num_samples
    noise = {n: sample_gumbels((num, k), generator).numpy() for n, k in spec.schema.size_of.items()}
    return spec.graph.sample(_noise(spec, noise)).numpy(), noise


# --- the files ---------------------------------------------------------------------------------


def sample_variant(spec: VariantSpec, out: Path | str) -> Path:
    """Sample the variant and write it atomically, with `noise_<factor>` (N, K) float32 and
    `spec` (JSON text). On dSprites: an official-format .npz (imgs, latents_classes,
    latents_values, metadata). On any other base: a dataset file (`data/dataset.py`) whose
    images are the base's, each sample's drawn (numpy, seeded with the spec's seed) among the
    base rows with its classes; that row is kept in `base_row` (N,), with the base's recorded
    nuisance arrays at those rows, and the spec's `dataset` is written relative to `out`."""
    out = Path(out)
    if spec.dataset is not None and out.suffix != ".npz":
        raise CausalSpritesError(f"{out}: a dataset file's name must end in .npz")
    classes, noise = sample_classes(spec)
    noise_arrays = {NOISE_PREFIX + n: v for n, v in noise.items()}
    if spec.dataset is None:
        _write_dsprites(spec, classes, noise_arrays, out)
        return out
    index, base = spec.index, spec.base
    rows = index.pick(classes, np.random.default_rng(spec.seed))
    relative = os.path.relpath(spec.dataset, out.resolve().parent)
    extra = {
        **{key: values[rows] for key, values in index.nuisance.items()},
        **noise_arrays,
        "spec": np.array(json.dumps({**spec.to_dict(), "dataset": relative})),
        BASE_ROW: rows,
    }
    step = chunk_rows(spec.schema)
    chunks = (base.images(rows[i : i + step]) for i in range(0, len(rows), step))
    return write_dataset(out, chunks, classes.astype(np.float64), spec.schema, extra=extra)


def _write_dsprites(
    spec: VariantSpec, classes: np.ndarray, noise: dict[str, np.ndarray], out: Path
) -> None:
    """A dSprites variant as an official-format .npz, its images drawn by the generator."""
    unique, inverse = np.unique(classes, axis=0, return_inverse=True)
    images = render(unique)[inverse.reshape(-1)]
    full = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], axis=1)
    info = {**metadata(), "title": f"causal dSprites variant {spec.name}"}
    arrays: dict[str, Any] = {
        "imgs": images,
        "latents_classes": full,
        "latents_values": _official_values(spec.schema, full),
        "metadata": np.array(json.dumps(info)),
        "spec": np.array(json.dumps(spec.to_dict())),
        **noise,
    }
    with atomic_path(out) as temporary, temporary.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


def _official_values(schema: Schema, full: np.ndarray) -> np.ndarray:
    """`latents_values` (N, 6) of dSprites classes (N, 6): color 1, then each class's value."""
    columns = [np.asarray(f.values)[full[:, i + 1]] for i, f in enumerate(schema.factors)]
    return np.stack([np.ones(len(full)), *columns], -1)


def read_variant(path: Path | str) -> tuple[VariantSpec, dict[str, np.ndarray]]:
    """The spec and recorded noise {factor: (N, K) float32} of a variant file: a dSprites
    official-format .npz or a dataset file, each with its `spec` and `noise_*` (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise CausalSpritesError(f"no such file: {path}")
    not_variant = f"{path} is not a causal variant (no recorded spec and noise)"
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "spec" not in keys or not any(k.startswith(NOISE_PREFIX) for k in keys):
                raise CausalSpritesError(not_variant)
            schema = Schema.from_json(str(archive["schema"])) if "schema" in keys else None
            names = (schema or DSprites.schema).names
            if any(NOISE_PREFIX + n not in keys for n in names):
                raise CausalSpritesError(not_variant)
            raw = json.loads(str(archive["spec"]))
            noise = {n: archive[NOISE_PREFIX + n] for n in names}
        spec = parse_spec(raw, root=path.parent, schema=schema)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CausalSpritesError(f"{path}: cannot read variant ({error})") from None
    except CausalSpritesError as error:
        text = str(error) if str(path) in str(error) else f"{path}: {error}"
        raise CausalSpritesError(text) from None
    for n, k in spec.schema.size_of.items():
        if noise[n].shape != (spec.num_samples, k):
            raise CausalSpritesError(f"{path}: noise_{n} has shape {noise[n].shape}")
    return spec, noise


def variant_of(path: Path | str | None) -> tuple[VariantSpec, dict[str, np.ndarray]] | None:
    """(spec, recorded noise) when `path` is a causal variant file, None when it is plain data
    (an official dSprites .npz or .hdf5, a dataset file, without a recorded spec); a file that
    claims to be a variant but cannot be read is an error, never silently plain data."""
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


# --- the truth ---------------------------------------------------------------------------------


def true_candidates(
    spec: VariantSpec, classes: np.ndarray, base_rows: np.ndarray | None = None
) -> list[np.ndarray]:
    """The base rows whose images are true images of class tuples (B, K), per tuple: those with
    the classes and, where there are any, the recorded nuisance of the factual base rows (B,)
    (`base_row`), which the counterfactual keeps; one row where the base holds the tuple once
    or records what tells its images apart, else every row that may be the truth."""
    return spec.index.candidates(_classes(spec, classes).numpy(), base_rows)


def true_images(
    spec: VariantSpec, classes: np.ndarray, base_rows: np.ndarray | None = None
) -> np.ndarray:
    """Images of class tuples (B, K): on dSprites drawn by the generator; on another base its
    image with those classes, the first of `true_candidates`."""
    if spec.dataset is None:
        return render(_classes(spec, classes).numpy())
    rows = [candidates[0] for candidates in true_candidates(spec, classes, base_rows)]
    return spec.base.images(np.array(rows, dtype=np.int64))


def counterfactual_classes(
    spec: VariantSpec,
    noise: Mapping[str, np.ndarray],
    classes: np.ndarray,
    do: Mapping[str, int | str],
) -> np.ndarray:
    """The variant's true counterfactual classes (B, K) int64 of observed classes (B, K) (or
    (B, 6) with dSprites' color) with their noise {factor: (B, K_f)} under `do`: intervened
    factors fixed, their descendants recomputed with the same noise, the rest kept."""
    values = spec.schema.classes(do)
    factual = _classes(spec, classes)
    for node, k in spec.schema.size_of.items():
        if node in noise and np.shape(noise[node]) != (len(factual), k):
            raise CausalSpritesError(
                f"noise of {node} has shape {np.shape(noise[node])}, expected ({len(factual)}, {k})"
            )
    return spec.graph.predict(factual, _noise(spec, noise), values).numpy()


def true_counterfactual(
    spec: VariantSpec,
    noise: Mapping[str, np.ndarray],
    classes: np.ndarray,
    do: Mapping[str, int | str],
    base_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The variant's true counterfactual of observed classes (B, K) with their noise under `do`:
    its `counterfactual_classes` (B, K) int64 and their `true_images`, keeping the recorded
    nuisance of the factual base rows (B,) where given."""
    cf = counterfactual_classes(spec, noise, classes, do)
    return cf, true_images(spec, cf, base_rows)


def abduct_noise(spec: VariantSpec, classes: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Noise {factor: (B, K)} drawn from its exact posterior given observed classes (B, K) under
    the variant's own tables: what a perfect model knows of the noise, as against the recording.

    Fed to `true_counterfactual`, it gives a perfect model's counterfactual; compared with the
    recorded truth it shows how much of a counterfactual the observation determines: a descendant
    of the intervened factor is only known in distribution when its mechanism is stochastic."""
    generator = torch.Generator().manual_seed(seed)
    factual = _classes(spec, classes)
    return {n: v.numpy() for n, v in spec.graph.abduct(factual, generator).items()}


# --- exact distributions, the truth for the distribution metrics -------------------------------


def joint(spec: VariantSpec, do: Mapping[str, int | str] | None = None) -> np.ndarray:
    """P(factors) over the whole factor grid (the schema's sizes, e.g. (3, 6, 40, 32, 32) on
    dSprites), under `do` if given (the intervened factors' tables replaced by point masses):
    the FactorGraph's joint."""
    return spec.graph.log_joint(spec.schema.classes(do or {})).exp().numpy()


def distribution(
    spec: VariantSpec,
    target: str,
    given: Mapping[str, int | str] | None = None,
    do: Mapping[str, int | str] | None = None,
) -> np.ndarray:
    """Exact P(target | given, do(...)) as a (K,) array."""
    names = spec.schema.names
    axis = spec.schema.index(target)
    p = joint(spec, do)
    for name, value in spec.schema.classes(given or {}).items():
        index = [slice(None)] * len(names)
        index[names.index(name)] = slice(value, value + 1)
        p = p[tuple(index)]
    marginal = p.sum(axis=tuple(i for i in range(len(names)) if i != axis))
    total = marginal.sum()
    if total <= 0:
        raise CausalSpritesError("the conditioning event has probability zero")
    return marginal / total
