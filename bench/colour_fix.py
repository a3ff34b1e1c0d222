"""Which change makes the `images` preset's decoder draw an object's colour from its factors?

On bench/own_data.py's colour set the decoder drew every hue as the same grey after 10 minutes, so
the readout (the decoder's likelihood deciding between class tuples) misread hue and do(hue) left
the old hue in the image. Each contender here is the `images` preset with one change, trained for
the same number of steps (--steps, about what one CPU thread gets in 10 minutes) on the
benchmark's independent set, each in its own process with one thread, then scored on fresh
held-out images of the same generator: held-out bits/dim, reconstruction, the decoder's error on
the object's pixels, readout accuracy per factor from the pixels, and for do() on each factor the
counterfactual's PSNR and MAE against the true image, the MAE ratio to the model's own
reconstruction of the true image, and whether the image shows the new factors (effectiveness).

Contenders: `baseline` (the preset as it was), `film` (FiLM: (y, z) scale and shift every decoder
layer's channels), `ymaps` (the code (y, z) concatenated as constant maps to every decoder layer's
input), `kl-anneal` (the KL term weighted 8 at the start, falling linearly to 1 at half the steps,
1 after: the final objective is the ELBO), `z2` (z of 2 dimensions instead of 8). A `bnll+` prefix
trains with the beta-NLL reconstruction gradient that `ConditionalVAE.elbo_terms` means to use on
8-bit images: as committed (HEAD 5ae133b) Pyro's plate wraps the image site's `PixelDistribution`
in an `ExpandedDistribution`, elbo_terms' isinstance test fails and training falls back to the
plain NLL (beta = 0), under which a decoder explains a small object by a wide scale; the prefix
gives `PixelDistribution` an `expand` that keeps it one (a no-op once vae.py does so itself).
`+beta-anneal` takes that weighting from 1 to 0 over the last fifth of the steps, so training ends
on the ELBO; `bnll+film+kl-anneal+beta-anneal` is the `images` preset's FiLM decoder and "anneal"
objective schedule (`optim.objective_weights`). Every contender starts from the preset with the
plain decoder (no FiLM, no coordinates) and no objective schedule. Measured against commit
5ae133b's vae.py (bench/results/colour-fix.json says how).

Run `.venv/bin/python bench/colour_fix.py [--steps 6000] [--jobs 2] [--only a,b]`; writes
bench/results/colour-fix.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import own_data

from causal_sprites.config import PRESETS
from causal_sprites.data.dataset import Dataset
from causal_sprites.model import convnets
from causal_sprites.model.pixels import DiscretisedLogistic
from causal_sprites.model.vae import ConditionalVAE, PixelDistribution
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.train import fit

RESULTS = Path(__file__).resolve().parent / "results"
#: The KL weight's start for `kl-anneal`, and the fraction of the steps over which it falls to 1.
KL_START, KL_ANNEAL_FRACTION = 8.0, 0.5
#: The share of the steps at the end over which `beta_anneal` takes beta from 1 to 0.
BETA_ANNEAL_FRACTION = 0.2


class FiLMDecoder(convnets.ConvDecoder):
    """The conv decoder with FiLM on every layer (`ConvDecoder(film=True)`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "film": True})


class YMapsDecoder(convnets.ConvDecoder):
    """The conv decoder whose every transposed convolution also reads the code (y, z) as
    constant maps (concatenated channels): the other common way to condition every layer."""

    def __init__(self, image_shape: Any, y_dim: int, z_dim: int, *args: Any, **kwargs: Any):
        super().__init__(image_shape, y_dim, z_dim, *args, **kwargs)
        self.code_dim = y_dim + z_dim
        for index, layer in enumerate(self.convs):
            if isinstance(layer, nn.ConvTranspose2d):
                self.convs[index] = nn.ConvTranspose2d(
                    layer.in_channels + self.code_dim,
                    layer.out_channels,
                    layer.kernel_size,
                    layer.stride,
                    layer.padding,
                )

    def forward(self, y_encoded: Tensor, z: Tensor) -> Tensor:
        codes = torch.cat([y_encoded, z], dim=-1)
        maps = self.mlp(codes).view(len(z), -1, *self.coarse)
        for layer in self.convs:
            if isinstance(layer, nn.ConvTranspose2d):
                planes = codes[..., None, None].expand(-1, -1, *maps.shape[-2:])
                maps = torch.cat([maps, planes.to(maps.dtype)], dim=1)
            maps = layer(maps)
        top = (maps.shape[-2] - self.height) // 2
        left = (maps.shape[-1] - self.width) // 2
        return maps[..., top : top + self.height, left : left + self.width]


CONTENDERS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "film": {"decoder": FiLMDecoder},
    "ymaps": {"decoder": YMapsDecoder},
    "kl-anneal": {"kl_anneal": True},
    "z2": {"model": {"z_dim": 2}},
    "bnll": {"beta_nll": True},
    "bnll+film": {"beta_nll": True, "decoder": FiLMDecoder},
    "bnll+ymaps": {"beta_nll": True, "decoder": YMapsDecoder},
    "bnll+film+kl-anneal": {"beta_nll": True, "decoder": FiLMDecoder, "kl_anneal": True},
    "bnll+film+z2": {"beta_nll": True, "decoder": FiLMDecoder, "model": {"z_dim": 2}},
    "bnll+film+beta-anneal": {"beta_nll": True, "decoder": FiLMDecoder, "beta_anneal": True},
    "bnll+film+kl-anneal+beta-anneal": {
        "beta_nll": True,
        "decoder": FiLMDecoder,
        "kl_anneal": True,
        "beta_anneal": True,
    },
}


def keep_pixel_distribution() -> None:
    """Make Pyro's plate expand the image site's `PixelDistribution` into one (not wrap it in an
    `ExpandedDistribution`), so that elbo_terms trains with the likelihood's beta-NLL term."""

    def expand(self: PixelDistribution, batch_shape: Any, _instance: Any = None) -> Any:
        params = self.params.expand(*batch_shape, *self.params.shape[-3:])
        return PixelDistribution(self.likelihood, params)

    PixelDistribution.expand = expand  # type: ignore[method-assign]


def schedules(spec: dict[str, Any], steps: int) -> Callable[[int, ConditionalVAE], None] | None:
    """The per-step hook of a contender's training schedules, None without any: `kl_anneal`
    weights the training KL by KL_START falling linearly to 1 over KL_ANNEAL_FRACTION of the
    steps; `beta_anneal` takes the beta-NLL weighting from 1 to 0 over the steps' last fifth
    (where the learning rate decays), so that the last steps follow the plain ELBO. Both act on
    the model's and the likelihood's methods, whatever weights the loss passes them; evaluation,
    in eval mode, is always the plain bound. (The same as `optim.objective_weights`' "anneal".)"""
    if not (spec.get("kl_anneal") or spec.get("beta_anneal")):
        return None
    weight, beta = [KL_START if spec.get("kl_anneal") else 1.0], [1.0]
    plain_terms = ConditionalVAE.elbo_terms
    plain_log_prob = DiscretisedLogistic.training_log_prob

    def elbo_terms(self: ConditionalVAE, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        recon, kl = plain_terms(self, *args, **kwargs)
        return (recon, kl * weight[0]) if self.training else (recon, kl)

    def training_log_prob(self: DiscretisedLogistic, params: Tensor, x: Tensor, _: float) -> Tensor:
        return plain_log_prob(self, params, x, beta[0])

    ConditionalVAE.elbo_terms = elbo_terms  # type: ignore[method-assign]
    if spec.get("beta_anneal"):
        DiscretisedLogistic.training_log_prob = training_log_prob  # type: ignore[method-assign]

    def on_step(step: int, model: ConditionalVAE) -> None:
        if spec.get("kl_anneal"):
            progress = min(step / (KL_ANNEAL_FRACTION * steps), 1.0)
            weight[0] = KL_START + (1.0 - KL_START) * progress
        beta[0] = min(max((steps - step) / (BETA_ANNEAL_FRACTION * steps), 0.0), 1.0)

    return on_step


def score(model: CausalModel, num: int) -> dict[str, Any]:
    """own_data's metrics on `num` fresh held-out images (no discovery, no labels-read run)."""
    classes, grey = own_data.independent_draws(num, 1000)
    images = own_data.render(classes, grey)
    held_out = Dataset(own_data.SCHEMA, images, classes.astype(np.float64))
    out: dict[str, Any] = {"nelbo": own_data.nelbo(model, held_out, np.arange(num))}
    recon = model.reconstruct(images, classes)
    out["reconstruction"] = {
        "mae": float(own_data.per_image_mae(recon, images).mean()),
        "psnr": float(own_data.per_image_psnr(recon, images).mean()),
    }
    out["decoder"] = own_data.decoder_diagnostics(model, images, classes, grey)
    read = own_data.readout(model, images, classes)
    read.pop("mode")
    out["readout"] = read
    rng = np.random.default_rng(1007)
    per_factor = {}
    for column, (name, size) in enumerate(zip(own_data.NAMES, own_data.SIZES_K, strict=True)):
        target = own_data.other_classes(classes, column, size, rng)
        result = model.counterfactual_query(images, classes, do={name: target}, seed=0)
        true_classes = classes.copy()
        true_classes[:, column] = target
        truth = own_data.render(true_classes, grey)
        recon_truth = model.reconstruct(truth, true_classes)
        shown = own_data.drawn_classes(result.images, grey)
        per_factor[name] = {
            **own_data.pixel_scores(result.images, truth, recon_truth, images),
            "effectiveness": float((shown == result.counterfactual).all(1).mean()),
        }
    out["counterfactual"] = per_factor
    out["summary"] = {
        "bits_per_dim": out["nelbo"]["bits_per_dim"],
        "readout_min": read["accuracy_min"],
        "cf_psnr_min": min(f["psnr"] for f in per_factor.values()),
        "cf_mae_ratio_max": max(f["mae_ratio"] for f in per_factor.values()),
        "effectiveness_min": min(f["effectiveness"] for f in per_factor.values()),
        "object_mean_mae": out["decoder"]["object"]["mean_mae"],
    }
    return out


def run_contender(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and score one contender in this process (one thread)."""
    torch.set_num_threads(1)
    spec = CONTENDERS[name]
    if "decoder" in spec:
        convnets.ConvDecoder = spec["decoder"]  # type: ignore[misc]
    if spec.get("beta_nll"):
        keep_pixel_distribution()
    hook = schedules(spec, args.steps)
    classes, grey = own_data.independent_set(args.repeats, seed=0)
    data = Dataset(own_data.SCHEMA, own_data.render(classes, grey), classes.astype(np.float64))
    preset = PRESETS["images"]
    config = replace(
        preset,
        # The plain decoder and objective; a contender changes one thing at a time.
        model=replace(
            preset.model,
            **{"decoder_film": False, "decoder_coords": False, **spec.get("model", {})},
        ),
        train=replace(
            preset.train,
            objective_schedule="none",
            max_steps=args.steps,
            seed=args.seed,
            eval_every=10**9,
            max_minutes=None,
        ),
    )
    with tempfile.TemporaryDirectory(prefix=f"colour-fix-{name}-") as tmp:
        start = time.perf_counter()
        record = fit(
            Path(tmp) / "run", config, data, torch.device("cpu"), False, False, False, hook
        )
        wall = time.perf_counter() - start
        model = load_run(Path(tmp) / "run")
        scored = score(model, args.eval_images)
    return {
        "contender": name,
        "steps": record["step"],
        "train_seconds": record["elapsed"],
        "train_wall_seconds": wall,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "fit_classifier_accuracy": record["classifier_accuracy"],
        **scored,
    }


def table(results: dict[str, Any]) -> str:
    """One row per contender: the targets' numbers."""
    lines = [
        "| contender | s/step | bits/dim | object MAE | readout (worst) | readout hue | "
        "CF PSNR worst | CF MAE ratio worst | effectiveness worst |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        if "error" in entry:
            lines.append(f"| {name} | failed: {entry['error'][:60]} |")
            continue
        s = entry["summary"]
        lines.append(
            f"| {name} | {entry['train_seconds'] / entry['steps']:.3f} | {s['bits_per_dim']:.3f} "
            f"| {s['object_mean_mae']:.1f} | {s['readout_min']:.3f} "
            f"| {entry['readout']['accuracy']['hue']:.3f} | {s['cf_psnr_min']:.1f} "
            f"| {s['cf_mae_ratio_max']:.3f} | {s['effectiveness_min']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=100, help="images per combination")
    parser.add_argument("--eval-images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="contenders trained at once")
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help="comma-separated contender names"
    )
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # one contender, in this process
    parser.add_argument("--out", type=Path, default=RESULTS / "colour-fix.json")
    args = parser.parse_args()
    if args.contender:
        args.out.write_text(
            json.dumps(run_contender(args.contender, args), default=own_data._json_default)
        )
        return
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; known: {sorted(CONTENDERS)}")
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="colour-fix-") as tmp:

        def launch(name: str) -> dict[str, Any]:
            path = Path(tmp) / f"{name}.json"
            command = [
                sys.executable, __file__, "--contender", name, "--out", str(path),
                "--steps", str(args.steps), "--repeats", str(args.repeats),
                "--eval-images", str(args.eval_images), "--seed", str(args.seed),
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                return {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
            print(f"[{time.perf_counter() - started:.0f}s] {name} done", flush=True)
            result: dict[str, Any] = json.loads(path.read_text())
            return result

        with ThreadPoolExecutor(args.jobs) as pool:
            results = dict(zip(names, pool.map(launch, names), strict=True))
    output = {
        "benchmark": "colour_fix",
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads_per_contender": 1,
            "jobs": args.jobs,
            "load_before": load_before,
            "load_after": list(os.getloadavg()),
        },
        "steps": args.steps,
        "seconds": time.perf_counter() - started,
        "contenders": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=2, default=own_data._json_default) + "\n")
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
