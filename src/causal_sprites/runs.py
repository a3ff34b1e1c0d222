"""Run directories: config.json, model.safetensors, checkpoint.safetensors, metrics.jsonl.

Weights and training state are safetensors (never pickle) and every file is written atomically
(temporary name, fsync, rename), so a crash leaves the previous version whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from causal_sprites.config import RunConfig
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import HIGHEST_THRESHOLD
from causal_sprites.model.vae import ConditionalVAE

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
LIKELIHOOD_FILE = "likelihood.json"
LOCK_FILE = ".lock"
TEMPORARY_SUFFIX = ".tmp"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A failed write (disk full, say) raises one clear error and leaves the previous file whole.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
        )
    except OSError as error:
        raise CausalSpritesError(f"cannot write {path}: {error.strerror or error}") from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(temporary, path)
    except OSError as error:
        raise CausalSpritesError(
            f"could not write {path} ({error.strerror or error}); the previous version is intact"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files that a killed writer left in a run directory (call under the lock)."""
    for stale in run_dir.glob(f".*{TEMPORARY_SUFFIX}"):
        stale.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory while training into it.

    flock: the kernel drops the lock when its holder dies, so a killed run never leaves it stuck.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CausalSpritesError(
                f"another process is training into {run_dir}; wait for it or choose another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write a safetensors file atomically; `meta` rides in its header."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(contiguous, str(temporary), metadata=meta)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing anything else (a pickle renamed, a truncated file)."""
    if not path.is_file():
        raise CausalSpritesError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CausalSpritesError(f"{path} is not a valid safetensors file ({error})") from None


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors header."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise CausalSpritesError(f"{path} is not a valid safetensors file ({error})") from None


def resolve_run(run: str | Path) -> Path:
    """The directory of a run name: `pretrained` means the run shipped with the package."""
    path = PRETRAINED_DIR if str(run) == "pretrained" else Path(run)
    if not path.is_dir():
        raise CausalSpritesError(f"run directory {path} does not exist")
    return path


def read_config(run_dir: Path) -> RunConfig:
    """The run's config.json."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CausalSpritesError(f"{path} is missing: not a run directory")
    return RunConfig.from_json(path.read_text())


def build_model(config: RunConfig) -> ConditionalVAE:
    """A fresh model from the config alone."""
    return ConditionalVAE(config.model, config.graph, config.factor_schema)


def load_model(
    run: str | Path, device: torch.device | None = None
) -> tuple[ConditionalVAE, RunConfig]:
    """Rebuild a run's model from config.json and model.safetensors, in eval mode."""
    run_dir = resolve_run(run)
    config = read_config(run_dir)
    model = build_model(config)
    state = load_tensors(run_dir / MODEL_FILE)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # the first mismatch, not the preamble
        raise CausalSpritesError(
            f"{run_dir / MODEL_FILE} does not fit config.json: {detail}"
        ) from None
    model.eval()
    return model.to(device or torch.device("cpu")), config


def save_model(run_dir: Path, model: ConditionalVAE, config: RunConfig) -> None:
    """Write config.json and model.safetensors."""
    write_text_atomic(run_dir / CONFIG_FILE, config.to_json())
    state = {k: v for k, v in model.state_dict().items()}
    save_tensors_atomic(run_dir / MODEL_FILE, state, {"format": "causal-sprites"})


def write_likelihood_range(run_dir: Path, usual: dict[str, float]) -> None:
    """Record the usual range of held-out log-likelihoods (see `readout.likelihood_range`)."""
    write_text_atomic(run_dir / LIKELIHOOD_FILE, json.dumps(usual, indent=2) + "\n")


def read_likelihood_range(run_dir: Path) -> dict[str, float] | None:
    """The run's recorded likelihood range, or None when it has none (runs before it existed)."""
    path = run_dir / LIKELIHOOD_FILE
    if not path.is_file():
        return None
    try:
        usual = json.loads(path.read_text())
        found = {key: float(usual[key]) for key in ("low", "median", "high", "threshold")}
        if "labelled_median" in usual:
            found["labelled_median"] = float(usual["labelled_median"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CausalSpritesError(f"{path} is malformed; delete it or retrain") from None
    # A range recorded before the cap existed gets it too.
    return {**found, "threshold": min(found["threshold"], HIGHEST_THRESHOLD)}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All readable records of metrics.jsonl (an absent file is empty); a line cut by a crash is
    skipped, so the records a resumed run appends after it still count."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(run_dir: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite metrics.jsonl keeping only the records `keep` accepts (used on resume)."""
    records = [r for r in read_metrics(run_dir) if keep(r)]
    write_text_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to metrics.jsonl."""
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


#: How far a run's final held-out NELBO may end above the best it logged before it: healthy
#: colour and pendulum runs ended within 1.4 % of their best; a pendulum run whose loss spiked
#: mid-run and never recovered ended 73 % above (BENCHMARKS.md).
ASTRAY = 0.1


def astray_warning(records: list[dict[str, Any]]) -> str | None:
    """A warning where the last held-out NELBO of `read_metrics`' records is more than ASTRAY
    above the best one before it (the run went astray and its final model is not its best),
    else None."""
    evaluations = [r for r in records if "test_nelbo" in r]
    if len(evaluations) < 2:
        return None
    final = evaluations[-1]["test_nelbo"]
    best = min(evaluations[:-1], key=lambda r: r["test_nelbo"])
    if final <= (1 + ASTRAY) * best["test_nelbo"]:
        return None
    return (
        f"the held-out NELBO ended at {final:.1f} nats/image, {final / best['test_nelbo'] - 1:.0%} "
        f"above the {best['test_nelbo']:.1f} it reached at step {best['step']}: training went "
        "astray (a loss spike it did not recover from); train again with another --seed"
    )
