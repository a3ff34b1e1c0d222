"""What the benchmarks that train a model with the true graph and one ignoring it share: both
trained and scored at once, one spawned process each, and the machine they ran on."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch

Graph = tuple[tuple[str, str], ...]


def side_by_side(
    train_and_score: Callable[[str, Graph, Any], dict[str, Any]],
    models: Mapping[str, Graph],
    args: Any,
    processes: int | None = None,
) -> dict[str, dict[str, Any]]:
    """`train_and_score(name, graph, args)` for every model at once, each in its own process
    (or at most `processes` at a time: for work that is not timed)."""
    workers = min(len(models), processes or len(models))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {n: pool.submit(train_and_score, n, g, args) for n, g in models.items()}
        return {name: future.result() for name, future in futures.items()}


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The platform, cores, torch version and the load before and now."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads_per_model": 1,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
