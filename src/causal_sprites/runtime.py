"""Where and how computation runs: device choice, seeding, mixed precision, library versions."""

from __future__ import annotations

import contextlib
import platform
import random
from collections.abc import Iterator
from importlib import metadata

import numpy as np
import torch

from causal_sprites.errors import CausalSpritesError


def choose_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CausalSpritesError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CausalSpritesError("device cuda requested but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CausalSpritesError("device mps requested but MPS is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so runs repeat on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """bfloat16 autocast on CPU/CUDA when enabled (AMX and tensor cores run it ~2x faster)."""
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation, figures) without moving the global torch RNG of training."""
    with torch.random.fork_rng(devices=[]):
        yield


def library_versions() -> dict[str, str]:
    """Versions recorded in every run's config.json."""
    versions = {"python": platform.python_version()}
    for name in ("causal-sprites", "torch", "pyro-ppl", "numpy", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions
