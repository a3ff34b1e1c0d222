"""The pose decoder's forward pass: the first implementation (a per-layer nn.Sequential on
(B, P, H) tensors over one 32x32 window, baseline), the fused pixel MLP on that one window
(`fused, 32 window`), and today's (`ours`: fused, a window per scale class), side by side,
interleaved, on the pretrained weights: inference (no grad, float32, what the posterior
p(y | x) spends its time on) and training (forward + backward under bf16 autocast).

Run `.venv/bin/python bench/decoder.py [--rounds 5]`; writes bench/results/decoder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from causal_sprites.data.factors import NUM_IMAGES, SCHEMA, SIZES, index_to_classes
from causal_sprites.model.nets import PoseDecoder
from causal_sprites.scm.queries import load_run

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def baseline_forward(decoder: PoseDecoder, y: Tensor, z: Tensor) -> Tensor:
    """The forward pass as it was before the fused pixel MLP (git history of model/nets.py)."""
    batch = y.shape[0]
    rows, cols = decoder.window_pixels(y, 32)
    uv = decoder.sprite_coordinates(y, rows.float(), cols.float())
    bias = decoder.image_bias(torch.cat([F.one_hot(y[:, 0], SIZES[0]).float(), z], dim=-1))
    hidden = decoder.coordinate_layer(decoder.features(uv)) + bias[:, None, :]
    patch = decoder.mlp(hidden).squeeze(-1).float()
    canvas = decoder.background_logit.expand(batch, 64 * 64)
    return canvas.scatter(1, rows * 64 + cols, patch).view(batch, 64, 64)


def rate(step: Any, batches: list[tuple[Tensor, Tensor]]) -> float:
    start = time.perf_counter()
    for y, z in batches:
        step(y, z)
    return sum(len(y) for y, _ in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS / "decoder.json")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    decoder = load_run("pretrained").model.decoder
    rows = np.random.default_rng(0).choice(NUM_IMAGES, 8 * args.batch, replace=False)
    y = torch.as_tensor(index_to_classes(rows)[:, 1:])
    z = torch.randn(len(y), decoder.image_bias.in_features - SIZES[0])
    batches = list(zip(y.split(args.batch), z.split(args.batch), strict=True))
    one_window = PoseDecoder(
        SCHEMA,
        decoder.image_bias.in_features - SIZES[0],
        decoder.coordinate_layer.out_features,
        sum(isinstance(layer, torch.nn.Linear) for layer in decoder.mlp),
        len(decoder.frequencies),
        window=32,
    )
    one_window.load_state_dict(decoder.state_dict())
    with torch.no_grad():
        ours = decoder(y[:64], z[:64])
        inside = ours != decoder.background_logit  # where today's windows reach
        same = (baseline_forward(decoder, y[:64], z[:64]) - ours)[inside].abs().max()

    def infer(fn: Any) -> Any:
        def step(yb: Tensor, zb: Tensor) -> None:
            with torch.no_grad():
                fn(yb, zb)

        return step

    def train(fn: Any) -> Any:
        def step(yb: Tensor, zb: Tensor) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fn(yb, zb).float().sum().backward()

        return step

    contenders = {
        "baseline": lambda yb, zb: baseline_forward(decoder, yb, zb),
        "fused, 32 window": one_window.forward,
        "ours": decoder.forward,
    }
    measured: dict[str, dict[str, list[float]]] = {
        mode: {name: [] for name in contenders} for mode in ("inference", "training")
    }
    for _ in range(args.rounds):  # interleaved, so load changes hit both alike
        for name, fn in contenders.items():
            measured["inference"][name].append(rate(infer(fn), batches))
            measured["training"][name].append(rate(train(fn), batches[:2]))
    summary = {
        mode: {
            **{f"{name}_decodes_per_s_median": float(np.median(v)) for name, v in runs.items()},
            **{
                f"speedup_{name}": float(np.median(v) / np.median(runs["baseline"]))
                for name, v in runs.items()
                if name != "baseline"
            },
        }
        for mode, runs in measured.items()
    }
    result = {
        "summary": summary,
        "runs": measured,
        "max_logit_difference": float(same),
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    print(args.out)


if __name__ == "__main__":
    main()
