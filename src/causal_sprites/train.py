"""Fit the conditional VAE by stochastic variational inference with exact, resumable checkpoints.

The loss is Pyro's ELBO of x | y (guide trace replayed through the model, analytic KL) plus the
M2 classifier term (Kingma et al. 2014), minimised by Adam. The data order is a function of
(seed, epoch), so a checkpoint holding weights, optimiser state, RNG state and the step resumes
bit for bit.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from causal_sprites.batches import (
    Batches,
    TrainingImages,
    learned_mechanisms,
    split_rows,
    training_images,
    training_labels,
)
from causal_sprites.checkpoint import load_checkpoint, save_checkpoint
from causal_sprites.config import RunConfig
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.joint import elbo
from causal_sprites.model.pixels import DiscretisedLogistic
from causal_sprites.model.readout import SearchBudget, infer_posterior, likelihood_range
from causal_sprites.model.refine import propose
from causal_sprites.model.vae import ConditionalVAE, topological_order
from causal_sprites.optim import (
    GradientGuard,
    budget_fraction,
    lr_factor,
    objective_weights,
    parameter_groups,
)
from causal_sprites.runs import (
    CHECKPOINT_FILE,
    append_metrics,
    build_model,
    load_model,
    read_config,
    remove_stale_temporaries,
    resolve_run,
    run_lock,
    save_model,
    truncate_metrics,
    write_likelihood_range,
)
from causal_sprites.runtime import (
    Distributed,
    autocast,
    current_distributed,
    library_versions,
    preserved_rng,
    seed_everything,
)

StepHook = Callable[[int, ConditionalVAE], None]
LOG_EVERY = 50
MAX_SKIPPED_STEPS = 10  # steps in a row whose gradient is not finite before a run stops
#: Held-out images whose log-likelihoods set a run's usual range (about 2 s on 2 cores).
LIKELIHOOD_IMAGES = 256


def total_steps(config: RunConfig, per_epoch: int) -> int | None:
    """The step budget from --steps or --epochs (None: time-limited only)."""
    budgets = []
    if config.train.max_steps is not None:
        budgets.append(config.train.max_steps)
    if config.train.max_epochs is not None:
        budgets.append(math.ceil(config.train.max_epochs * per_epoch))
    return min(budgets) if budgets else None


@torch.no_grad()
def evaluate_nelbo(
    model: ConditionalVAE,
    images: TrainingImages,
    labels: torch.Tensor,
    rows: np.ndarray,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Mean test NELBO, reconstruction and KL (nats/image), q(y | x)'s accuracy per categorical
    factor and its mean absolute error per continuous one (in the factor's unit).

    Always in float32, whatever precision training used, so numbers compare across runs.
    """
    device = labels.device
    totals = {"recon": 0.0, "kl": 0.0}
    categorical = [i for i, f in enumerate(model.schema.factors) if f.kind == "categorical"]
    correct = torch.zeros(len(categorical))
    errors = dict.fromkeys(model.schema.continuous, 0.0)
    was_training = model.training
    model.eval()
    with preserved_rng():
        for start in range(0, len(rows), batch_size):
            chosen = torch.from_numpy(rows[start : start + batch_size]).to(device)
            x = images(chosen)
            y = labels[chosen]
            features = model.features(x)
            recon, kl = model.elbo_terms(x, y, features)
            logits = model.classify(x, features)
            totals["recon"] -= recon.sum().item()
            totals["kl"] += kl.sum().item()
            for k, (i, factor_logits) in enumerate(zip(categorical, logits, strict=True)):
                correct[k] += (factor_logits.argmax(-1) == y[:, i]).sum().item()
            if errors:
                values, _ = propose(model, x, features)
                truth = y[:, [model.names.index(n) for n in errors]]
                for k, name in enumerate(errors):
                    errors[name] += (values[:, k] - truth[:, k]).abs().sum().item()
    model.train(was_training)
    count = max(len(rows), 1)
    return {
        "test_recon": totals["recon"] / count,
        "test_kl": totals["kl"] / count,
        "test_nelbo": (totals["recon"] + totals["kl"]) / count,
        "classifier_accuracy": {
            model.names[i]: float(c) / count for i, c in zip(categorical, correct, strict=True)
        },
        **({"regression_mae": {n: e / count for n, e in errors.items()}} if errors else {}),
    }


@torch.no_grad()
def held_out_likelihood_range(
    model: ConditionalVAE, images: TrainingImages, labels: torch.Tensor, rows: np.ndarray
) -> dict[str, float]:
    """The usual range of the posterior mode's log-likelihood on (up to 256) held-out images, in
    eval mode and float32: what tells an out-of-distribution upload apart; for 8-bit images also
    the median at the images' true labels, the scale a badly explained image is judged on (they
    score thousands of nats; a binary image a good model explains scores a few). The search does
    not escalate here (cheap on a weak model; it changes the 1 % quantile by nothing on a good
    one, where fewer than 1 % of images escalate)."""
    was_training = model.training
    model.eval()
    chosen = torch.from_numpy(rows[:LIKELIHOOD_IMAGES]).to(labels.device)
    x = images(chosen)
    with preserved_rng(), torch.no_grad():
        posterior = infer_posterior(model, x, top=1, budget=SearchBudget(escalate=False))
        labelled = None
        if not model.schema.binary:
            labelled = elbo(model, x, model.features(x), labels[chosen]).cpu().numpy()
    model.train(was_training)
    return likelihood_range(posterior.log_likelihood, labelled)


@contextmanager
def progress_bar(enabled: bool, total: int | None) -> Iterator[Progress]:
    """A rich bar showing step, NELBO and images/s."""
    columns = [
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("step {task.completed}"),
        TextColumn("NELBO {task.fields[nelbo]}"),
        TextColumn("{task.fields[rate]} img/s"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not enabled, transient=False) as progress:
        yield progress


def prepare_run(
    run_dir: Path,
    config: RunConfig,
    resume: bool,
    schema: dict[str, Any],
    learned: tuple[str, ...] = (),
) -> tuple[RunConfig, bool]:
    """Check the run directory; return the config to train with (recording the data's `schema`
    and the factors whose mechanisms are `learned` networks) and whether to resume. A resume of
    a run killed before its first checkpoint starts afresh (what a relaunch with the same
    command, as torchrun --max-restarts or a job scheduler makes, needs)."""
    if resume and (run_dir / CHECKPOINT_FILE).is_file():
        stored = read_config(run_dir)
        return replace(stored, train=replace(stored.train, **_budget(config))), True
    if not resume and (run_dir / CHECKPOINT_FILE).exists():
        raise CausalSpritesError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    model = replace(config.model, network_mechanisms=learned)
    return replace(config, libraries=library_versions(), schema=schema, model=model), False


def _budget(config: RunConfig) -> dict[str, Any]:
    """The stopping fields a resumed run takes from the command line."""
    train = config.train
    return {
        "max_steps": train.max_steps,
        "max_epochs": train.max_epochs,
        "max_minutes": train.max_minutes,
    }


def fit(
    run_dir: Path,
    config: RunConfig,
    data: DSprites | Dataset,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run in `run_dir`; returns the final evaluation record.

    Under torchrun (an initialised process group) every rank trains its share of each batch with
    DistributedDataParallel; rank 0 alone holds the run's lock, logs and writes checkpoints.
    `on_step(step, model)` runs after every optimiser step (tests check ranks agree with it).
    """
    # Refuse bad input before touching the run directory.
    topological_order(config.graph, data.schema.names)
    model = ConditionalVAE(config.model, config.graph, data.schema)  # can it draw the data?
    if config.train.change_weight and not isinstance(model.likelihood, DiscretisedLogistic):
        raise CausalSpritesError("--change-weight is for 8-bit images; this data is binary")
    if total_steps(config, 1) is None and config.train.max_minutes is None:
        raise CausalSpritesError("give a budget: --steps, --epochs or --minutes")
    config, resuming = prepare_run(
        run_dir, config, resume, data.schema.to_json(), learned_mechanisms(data, config)
    )
    distributed = current_distributed()
    if resume and not resuming and distributed.is_main:
        print(f"note: {run_dir} has no checkpoint yet: starting afresh", file=sys.stderr)
    resume = resuming
    hook = on_step or (lambda step, model: None)
    if not distributed.is_main:
        return _fit(run_dir, config, data, device, resume, False, False, distributed, hook)
    with run_lock(run_dir):
        remove_stale_temporaries(run_dir)
        return _fit(run_dir, config, data, device, resume, progress, tensorboard, distributed, hook)


def _fit(
    run_dir: Path,
    config: RunConfig,
    data: DSprites | Dataset,
    device: torch.device,
    resume: bool,
    progress: bool,
    tensorboard: bool,
    distributed: Distributed,
    on_step: StepHook,
) -> dict[str, Any]:
    main = distributed.is_main
    train_cfg = config.train
    seed_everything(train_cfg.seed)
    train_rows, test_rows = split_rows(data, config)
    if len(train_rows) == 0 or len(test_rows) == 0:
        raise CausalSpritesError("the split leaves no training or no test images")
    eval_rows = np.random.default_rng(train_cfg.seed).permutation(test_rows)
    eval_rows = eval_rows[: train_cfg.num_eval_images]
    images = training_images(data, device)
    labels = training_labels(data, device)
    model = build_model(config)
    train_labels = labels[torch.from_numpy(train_rows).to(device)]
    model.fit_tables(train_labels.cpu())
    model.to(device).train()
    started = time.monotonic()
    mechanism_nll = None if resume else model.fit_learned(train_labels, train_cfg.seed)
    for parameter in model.learned_parameters():  # fitted: the VAE's steps leave them be
        parameter.requires_grad_(False)
    groups = parameter_groups(model, config)
    base_rates = [group["lr"] for group in groups]
    optimizer = torch.optim.Adam(groups)
    batches = Batches(images, labels, train_rows, config, distributed)
    steps = total_steps(config, batches.per_epoch)
    step, elapsed = 0, time.monotonic() - started  # the mechanisms' fit counts in the budget
    guard = GradientGuard(train_cfg.grad_clip)
    if resume:
        state = load_checkpoint(run_dir, model, optimizer)
        step, elapsed = int(state["step"]), float(state["elapsed"])
        guard = GradientGuard(train_cfg.grad_clip, state.get("grad_norms"))
        if main:
            truncate_metrics(run_dir, lambda r: int(r.get("step", 0)) <= step)
    elif main:
        truncate_metrics(run_dir, lambda r: False)
        save_model(run_dir, model, config)
        if mechanism_nll is not None:
            append_metrics(run_dir, {"step": 0, "elapsed": elapsed, "mechanism_nll": mechanism_nll})
    trainer: torch.nn.Module = model
    if distributed.world_size > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(model)
    writer = _tensorboard_writer(run_dir) if tensorboard and main else None

    def shared_elapsed() -> float:
        """Step time so far, the same on every rank under DDP with a time budget (the slowest
        rank's; a collective, so every rank calls it once per step)."""
        if distributed.world_size > 1 and train_cfg.max_minutes is not None:
            slowest = torch.tensor([elapsed], device=device, dtype=torch.float64)
            torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
            return float(slowest.item())
        return elapsed

    def done(used: float) -> bool:
        over_time = train_cfg.max_minutes is not None and used >= 60 * train_cfg.max_minutes
        return over_time or (steps is not None and step >= steps)

    def checkpoint() -> None:
        if main:
            state = {"step": step, "elapsed": elapsed, "grad_norms": list(guard.recent)}
            save_checkpoint(run_dir, model, optimizer, state)
            save_model(run_dir, model, config)

    last_checkpoint = time.monotonic()
    window_start, window_images = time.monotonic(), 0
    skipped_steps = skipped_in_a_row = 0
    with progress_bar(progress, steps) as bar:
        task = bar.add_task("train", total=steps, completed=step, nelbo="-", rate="-")
        used = shared_elapsed()
        finished = done(used)
        while not finished:
            started = time.monotonic()
            factor = lr_factor(config, step, steps, used)
            for group, rate in zip(optimizer.param_groups, base_rates, strict=True):
                group["lr"] = rate * factor
            x, y, noise, uniform = batches(step)
            weights = objective_weights(config, budget_fraction(config, step, steps, used))
            with autocast(device, train_cfg.bf16):
                parts = trainer(x, y, train_cfg.classifier_weight, noise, uniform, **weights)
            loss = parts["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # A batch whose loss or gradient is not finite is skipped (its step counted, so the
            # data order and a resume stay as they were); after the gradients' all-reduce, so
            # every rank decides (and clips) alike. Many in a row stop the run.
            if guard.admit(model):
                optimizer.step()
                skipped_in_a_row = 0
            else:
                skipped_steps += 1
                skipped_in_a_row += 1
                if skipped_in_a_row >= MAX_SKIPPED_STEPS:
                    raise CausalSpritesError(
                        f"loss became {loss.item()} at step {step}, {MAX_SKIPPED_STEPS} steps in "
                        f"a row; stopped, the last good checkpoint in {run_dir} is kept (try a "
                        "lower learning rate)"
                    )
            step += 1
            on_step(step, model)
            elapsed += time.monotonic() - started
            window_images += x.shape[0] * distributed.world_size
            if step % LOG_EVERY == 0 and main:
                rate = window_images / max(time.monotonic() - window_start, 1e-9)
                window_start, window_images = time.monotonic(), 0
                record = {
                    "step": step,
                    "epoch": step / batches.per_epoch,
                    "elapsed": elapsed,
                    "images_per_s": rate,
                    **{f"train_{k}": v.item() for k, v in parts.items()},
                    "grad_norm_max": guard.take_largest(),
                    **({"skipped_steps": skipped_steps} if skipped_steps else {}),
                    **({"clipped_steps": guard.clipped_steps} if guard.clipped_steps else {}),
                }
                record["train_nelbo"] = record["train_recon"] + record["train_kl"]
                append_metrics(run_dir, record)
                _log_scalars(writer, record, step)
                bar.update(task, nelbo=f"{record['train_nelbo']:.2f}", rate=f"{rate:.0f}")
            bar.update(task, completed=step)
            used = shared_elapsed()
            finished = done(used)
            if main and step % train_cfg.eval_every == 0 and not finished:
                evaluation = evaluate_nelbo(model, images, labels, eval_rows)
                append_metrics(run_dir, {"step": step, "elapsed": elapsed, **evaluation})
                _log_scalars(writer, evaluation, step)
            minutes = (time.monotonic() - last_checkpoint) / 60
            if step % train_cfg.checkpoint_every == 0 or minutes >= train_cfg.checkpoint_minutes:
                checkpoint()
                last_checkpoint = time.monotonic()
    checkpoint()
    if not main:
        return {"step": step, "elapsed": elapsed}
    final = evaluate_nelbo(model, images, labels, eval_rows)
    final = {"step": step, "elapsed": elapsed, "final": True, **final}
    if skipped_steps:
        final["skipped_steps"] = skipped_steps
    if guard.clipped_steps:
        final["clipped_steps"] = guard.clipped_steps
    append_metrics(run_dir, final)
    usual = held_out_likelihood_range(model, images, labels, eval_rows)
    write_likelihood_range(run_dir, usual)
    _log_scalars(writer, final, step)
    if writer is not None:
        writer.close()
    return final


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CausalSpritesError(
            "--tensorboard needs the tensorboard extra: pip install 'causal-sprites[tensorboard]'"
        ) from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log_scalars(writer: Any, record: dict[str, Any], step: int) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, float):
            writer.add_scalar(key, value, step)
        elif isinstance(value, dict):
            for name, inner in value.items():
                writer.add_scalar(f"{key}/{name}", inner, step)


def rewrite_graph(run: str | Path, graph: tuple[tuple[str, str], ...]) -> None:
    """Give a trained run a new factor DAG: keep the networks, refit every factor's table from
    the run's training labels under the new parents, and save config and weights."""
    if str(run) == "pretrained":
        raise CausalSpritesError("the shipped pretrained run is read-only; copy it first")
    run_dir = resolve_run(run)
    model, config = load_model(run_dir)
    config = replace(config, graph=graph)
    rebuilt = build_model(config)
    networks = {k: v for k, v in model.state_dict().items() if not k.startswith("cpt_")}
    rebuilt.load_state_dict(networks, strict=False)
    data = DSprites.load(config.data)
    train_rows, _ = split_rows(data, config)
    rebuilt.fit_tables(torch.from_numpy(data.classes(train_rows)[:, 1:]))
    save_model(run_dir, rebuilt, config)
