"""A training checkpoint: weights, Adam moments, RNG state and the step in one safetensors file,
written atomically, so a resumed run continues bit for bit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.runs import (
    CHECKPOINT_FILE,
    load_tensors,
    read_safetensors_metadata,
    save_tensors_atomic,
)

CHECKPOINT_FORMAT = 1


def save_checkpoint(
    run_dir: Path, model: ConditionalVAE, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Weights, Adam moments, RNG state and the step in one safetensors file, atomically."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, slots in optimizer_state["state"].items():
        for key, value in slots.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value)
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {**state, "param_groups": optimizer_state["param_groups"], "format": CHECKPOINT_FORMAT}
    save_tensors_atomic(run_dir / CHECKPOINT_FILE, tensors, {"state": json.dumps(meta)})


def load_checkpoint(
    run_dir: Path, model: ConditionalVAE, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore what save_checkpoint wrote; returns its JSON state (step, elapsed, ...)."""
    path = run_dir / CHECKPOINT_FILE
    tensors = load_tensors(path)
    try:
        meta = json.loads(read_safetensors_metadata(path)["state"])
    except (KeyError, json.JSONDecodeError):
        raise CausalSpritesError(f"{path} has no readable training state") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CausalSpritesError(f"{path} has checkpoint format {meta.get('format')!r}")
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(model_state)
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/")
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng/torch"])
    return meta
