"""Run by torchrun in tests/test_distributed.py: train a tiny model one step per fit() call and
record, after every optimiser step, how far the ranks' parameters are apart."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from causal_sprites.config import PRESETS
from causal_sprites.data.dsprites import DSprites
from causal_sprites.runtime import init_distributed, leave_distributed
from causal_sprites.train import fit


def main() -> None:
    data_path, out, steps, report = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    distributed, device = init_distributed("cpu")
    tiny = PRESETS["tiny"]
    config = replace(
        tiny,
        train=replace(tiny.train, batch_size=32, bf16=False, checkpoint_every=1, max_steps=steps),
    )
    gaps: list[float] = []

    def compare_ranks(step: int, model: torch.nn.Module) -> None:
        vector = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(vector) for _ in range(distributed.world_size)]
        torch.distributed.all_gather(gathered, vector)
        gaps.append(max((g - gathered[0]).abs().max().item() for g in gathered))

    resume = (out / "checkpoint.safetensors").exists()
    fit(out, config, DSprites.load(data_path), device, resume, False, on_step=compare_ranks)
    if distributed.is_main:
        Path(report).write_text(json.dumps({"gaps": gaps, "world_size": distributed.world_size}))
    leave_distributed()


if __name__ == "__main__":
    main()
