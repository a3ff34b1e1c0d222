"""Where and how computation runs: device choice, seeding, mixed precision, library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

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


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run a block of many tiny torch ops on one thread: thread hand-offs cost more than they
    save there (a 300-step linear probe: 67 s on 2 busy threads, 0.2 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def threads_for_load(cores: int | None = None, busy: float | None = None) -> int:
    """Torch threads for a job starting now: the cores that other jobs leave free (at least 1).

    On 2 cores beside one busy process, one thread trains 3x faster than two (bench/threads.py):
    a second thread waits on a core that is not free. `busy` defaults to the processes running
    right now besides this one (median of 5 looks at /proc/loadavg over 0.2 s; the load average
    lags by a minute), `cores` to the CPUs this process may use."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    busy = busy if busy is not None else running_elsewhere()
    return max(1, min(cores, cores - round(busy)))


def running_elsewhere(looks: int = 5) -> float:
    """Runnable tasks on the machine besides this process, now (Linux; 0 elsewhere)."""
    counts = []
    for look in range(looks):
        try:
            fields = Path("/proc/loadavg").read_text().split()
        except OSError:
            return 0.0
        counts.append(int(fields[3].split("/")[0]) - 1)  # "running/total": minus ourselves
        if look < looks - 1:
            time.sleep(0.05)
    return float(statistics.median(counts))


def library_versions() -> dict[str, str]:
    """Versions recorded in every run's config.json."""
    versions = {"python": platform.python_version()}
    for name in ("causal-sprites", "torch", "pyro-ppl", "numpy", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates and writes checkpoints."""
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment (gloo on CPU, NCCL on CUDA).

    Without WORLD_SIZE > 1 this is a single process on `choose_device(device_name)`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = choose_device(device_name)
    if world_size == 1:
        return Distributed(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size()), device


def leave_distributed() -> None:
    """End a torchrun worker after success: wait for every rank, destroy the process group, flush
    and exit at once (status 0). torch 2.13 aborts a DDP-over-gloo process in about one exit in
    five while the interpreter tears down ("terminate called without an active exception", after
    all work is done; reproduced with a 10-line DDP script): skipping the teardown avoids it.
    A lone process (no process group) just returns."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def current_distributed() -> Distributed:
    """The job this process already joined (a lone process when none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Distributed()
