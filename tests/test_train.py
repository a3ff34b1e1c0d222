"""Training: exact resume, the NaN guard, metrics and a short end-to-end fit."""

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.config import ModelConfig, RunConfig, TrainConfig
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import NUM_IMAGES, index_to_classes
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.optim import GradientGuard, lr_factor, parameter_groups
from causal_sprites.runs import build_model, load_tensors, read_metrics
from causal_sprites.runtime import running_elsewhere, threads_for_load
from causal_sprites.train import fit

TINY = RunConfig(
    model=ModelConfig(decoder_hidden=16, num_frequencies=2, encoder_channels=4, encoder_hidden=16),
    train=TrainConfig(
        batch_size=16, eval_every=4, checkpoint_every=2, num_eval_images=32, bf16=False
    ),
)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_data() -> DSprites:
    rows = np.sort(np.random.default_rng(0).choice(NUM_IMAGES, 400, replace=False))
    classes = index_to_classes(rows)
    return DSprites.from_arrays(render(classes), classes)


def with_steps(config: RunConfig, steps: int) -> RunConfig:
    return replace(config, train=replace(config.train, max_steps=steps))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.parametrize(("grad_clip", "stop"), [(None, 11), (0.8, 24)])
def test_stopped_and_resumed_run_is_bit_identical(
    tiny_data: DSprites, tmp_path: Path, grad_clip: float | None, stop: int
) -> None:
    config = replace(TINY, train=replace(TINY.train, grad_clip=grad_clip))
    whole = fit(tmp_path / "whole", with_steps(config, 30), tiny_data, CPU, progress=False)
    fit(tmp_path / "parts", with_steps(config, stop), tiny_data, CPU, progress=False)
    fit(tmp_path / "parts", with_steps(config, 30), tiny_data, CPU, resume=True, progress=False)
    assert_same_weights(tmp_path / "whole", tmp_path / "parts")
    steps = [r["step"] for r in read_metrics(tmp_path / "parts") if "train_loss" in r]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume
    # The clipping bound (recent norms' median) resumes too: steps after the resume clip alike.
    assert ("clipped_steps" in whole) == (grad_clip is not None)


def guarded_gradient(guard: GradientGuard, norm: float) -> float:
    """Give a two-weight layer a gradient of `norm`; the norm after the guard admitted it."""
    layer = torch.nn.Linear(2, 1, bias=False)
    layer.weight.grad = torch.tensor([[0.6, 0.8]]) * norm
    assert guard.admit(layer)
    return float(layer.weight.grad.norm())


def test_the_guard_clips_a_spike_at_a_multiple_of_the_recent_median_norm() -> None:
    guard = GradientGuard(clip=5.0)
    assert guarded_gradient(guard, 1000.0) == pytest.approx(1000.0)  # too few norms yet
    assert guard.take_largest() == pytest.approx(1000.0)
    for norm in [2.0] * 60 + [4.0] * 40:  # the window holds the last 100: median 2
        guarded_gradient(guard, norm)
    assert guarded_gradient(guard, 9.0) == pytest.approx(9.0)
    assert guarded_gradient(guard, 300.0) == pytest.approx(10.0)
    assert guard.clipped_steps == 1 and guard.take_largest() == pytest.approx(300.0)
    assert guard.take_largest() == 0.0
    layer = torch.nn.Linear(2, 1, bias=False)
    layer.weight.grad = torch.tensor([[float("inf"), 0.0]])
    assert not guard.admit(layer) and len(guard.recent) == 100
    unclipped = GradientGuard(clip=None, recent=[1.0] * 100)
    assert guarded_gradient(unclipped, 300.0) == pytest.approx(300.0)


@pytest.mark.parametrize(
    ("schedule", "decoder_lr"), [("constant", None), ("cosine", None), ("decay", 0.01)]
)
def test_crash_between_checkpoints_resumes_bit_identically(
    tiny_data: DSprites,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    schedule: str,
    decoder_lr: float | None,
) -> None:
    train = replace(TINY.train, lr_schedule=schedule, decoder_lr=decoder_lr)
    config = with_steps(replace(TINY, train=train), 12)
    fit(tmp_path / "whole", config, tiny_data, CPU, progress=False)
    calls = {"n": 0}
    original_step = torch.optim.Adam.step

    def crashing_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 7:  # after the checkpoint at step 6, mid-way to the next
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "crashed", config, tiny_data, CPU, progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", original_step)
    fit(tmp_path / "crashed", config, tiny_data, CPU, resume=True, progress=False)
    assert_same_weights(tmp_path / "whole", tmp_path / "crashed")


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    tiny_data: DSprites, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit(tmp_path, with_steps(TINY, 4), tiny_data, CPU, progress=False)
    good = weights(tmp_path)
    original_loss = ConditionalVAE.loss

    def nan_loss(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        parts = original_loss(self, *args, **kwargs)
        return {**parts, "loss": parts["loss"] * float("nan")}

    monkeypatch.setattr(ConditionalVAE, "loss", nan_loss)
    with pytest.raises(CausalSpritesError, match=r"loss became nan at step 13, 10 steps in a row"):
        fit(tmp_path, with_steps(TINY, 40), tiny_data, CPU, resume=True, progress=False)
    kept = weights(tmp_path)
    assert all(torch.equal(good[k], kept[k]) for k in good)


def test_a_batch_with_a_nan_loss_is_skipped_and_training_goes_on(
    tiny_data: DSprites, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_loss = ConditionalVAE.loss
    calls = []

    def one_nan(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        parts = original_loss(self, *args, **kwargs)
        calls.append(1)
        return {**parts, "loss": parts["loss"] * float("nan")} if len(calls) == 3 else parts

    monkeypatch.setattr(ConditionalVAE, "loss", one_nan)
    final = fit(tmp_path, with_steps(TINY, 6), tiny_data, CPU, progress=False)
    assert final["step"] == 6 and final["skipped_steps"] == 1
    assert all(torch.isfinite(w).all() for w in weights(tmp_path).values())


def test_refuses_to_overwrite_and_resumes_nothing_afresh(
    tiny_data: DSprites, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = fit(tmp_path / "a", with_steps(TINY, 2), tiny_data, CPU, resume=True, progress=False)
    assert fresh["step"] == 2 and "no checkpoint yet: starting afresh" in capsys.readouterr().err
    fit(tmp_path, with_steps(TINY, 2), tiny_data, CPU, progress=False)
    with pytest.raises(CausalSpritesError, match="already holds a run"):
        fit(tmp_path, with_steps(TINY, 2), tiny_data, CPU, progress=False)
    with pytest.raises(CausalSpritesError, match="give a budget"):
        fit(tmp_path / "new", TINY, tiny_data, CPU, progress=False)


@pytest.mark.slow
def test_short_fit_lowers_the_test_nelbo(tiny_data: DSprites, tmp_path: Path) -> None:
    config = replace(TINY, train=replace(TINY.train, batch_size=32, eval_every=10, lr=3e-3))
    final = fit(tmp_path, with_steps(config, 60), tiny_data, CPU, progress=False)
    records = read_metrics(tmp_path)
    evaluations = [r for r in records if "test_nelbo" in r]
    assert final["test_nelbo"] < 0.5 * evaluations[0]["test_nelbo"]
    assert final["test_nelbo"] == pytest.approx(final["test_recon"] + final["test_kl"])
    assert set(final["classifier_accuracy"]) == {"shape", "scale", "orientation", "posX", "posY"}
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["libraries"]["torch"] == metadata.version("torch")


def test_cosine_schedule_anneals_over_the_budget_and_constant_does_not() -> None:
    cosine = replace(TINY, train=replace(TINY.train, lr=1e-3, lr_schedule="cosine"))
    rates = [1e-3 * lr_factor(cosine, step, 100, 0.0) for step in range(0, 101, 10)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[5] == pytest.approx(0.51e-3)
    assert rates[-1] == pytest.approx(0.02e-3)
    assert rates == sorted(rates, reverse=True)
    timed = replace(cosine, train=replace(cosine.train, max_minutes=2.0))
    # A time budget: the larger of the step and the time fraction decides.
    assert 1e-3 * lr_factor(timed, 0, None, 60.0) == pytest.approx(0.51e-3)
    assert 1e-3 * lr_factor(timed, 50, 100, 120.0) == pytest.approx(0.02e-3)
    assert lr_factor(TINY, 99, 100, 1e9) == 1.0


def test_the_decoder_learns_at_its_own_rate_and_the_schedule_scales_both() -> None:
    model = build_model(TINY)
    one = parameter_groups(model, TINY)
    assert len(one) == 1 and len(one[0]["params"]) == len(list(model.parameters()))
    split = replace(TINY, train=replace(TINY.train, lr=1e-3, decoder_lr=8e-3))
    rest, decoder = parameter_groups(model, split)
    assert {id(p) for p in decoder["params"]} == {id(p) for p in model.decoder.parameters()}
    assert len(rest["params"]) + len(decoder["params"]) == len(list(model.parameters()))
    assert (rest["lr"], decoder["lr"]) == (1e-3, 8e-3)
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    decoder_before = [p.detach().clone() for p in model.decoder.parameters()]
    optimizer = torch.optim.Adam(parameter_groups(model, split))
    x, y = (torch.rand(8, 1, 64, 64) < 0.2).float(), torch.zeros(8, 5, dtype=torch.long)
    model.loss(x, y, 1.0)["loss"].backward()
    optimizer.step()  # Adam's first step moves every weight by about its rate
    moved = [
        max((p - q).abs().max().item() for p, q in zip(module.parameters(), before, strict=True))
        for module, before in ((model.encoder, encoder_before), (model.decoder, decoder_before))
    ]
    assert moved[0] == pytest.approx(1e-3, rel=0.01) and moved[1] == pytest.approx(8e-3, rel=0.01)


def test_decay_schedule_is_constant_then_anneals_over_the_last_fifth() -> None:
    decay = replace(TINY, train=replace(TINY.train, lr=1e-3, lr_schedule="decay"))
    rates = [1e-3 * lr_factor(decay, step, 100, 0.0) for step in range(0, 101, 10)]
    assert rates[:9] == [pytest.approx(1e-3)] * 9  # steps 0 to 80
    assert rates[9] == pytest.approx(0.51e-3)  # half-way through the last fifth
    assert rates[10] == pytest.approx(0.02e-3)
    timed = replace(decay, train=replace(decay.train, max_minutes=10.0))
    assert 1e-3 * lr_factor(timed, 10, None, 540.0) == pytest.approx(0.51e-3)


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, "3000"), ({"GOMP_SPINCOUNT": "7"}, "7"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "unset")],
)
def test_openmp_threads_spin_briefly_unless_the_user_chose(
    given: dict[str, str], expected: str
) -> None:
    """The package sets libgomp's spin count before torch loads (a user's choice is kept)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = "import os, causal_sprites; print(os.environ.get('GOMP_SPINCOUNT', 'unset'))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env={**env, **given},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    loaded = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert loaded.index("causal_sprites.openmp") < loaded.index("torch")
    assert done.stdout.strip() == expected


def test_a_job_takes_the_cores_that_other_jobs_leave_free() -> None:
    assert threads_for_load(cores=2, busy=0) == 2
    assert threads_for_load(cores=2, busy=1) == 1
    assert threads_for_load(cores=2, busy=6) == 1
    assert threads_for_load(cores=16, busy=3) == 13
    assert 1 <= threads_for_load() <= os.cpu_count()  # type: ignore[operator]


def test_a_spinning_process_counts_as_busy() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert running_elsewhere() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_a_full_canvas_window_trains_with_the_subsampled_term(
    tiny_data: DSprites, tmp_path: Path
) -> None:
    """The uniform draws cover the largest window, whatever its size (here the whole image)."""
    wide = replace(TINY, model=replace(TINY.model, window=64, scale_windows=False))
    final = fit(tmp_path, with_steps(wide, 2), tiny_data, CPU, progress=False)
    assert final["step"] == 2 and math.isfinite(final["test_nelbo"])
