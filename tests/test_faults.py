"""Crashes lose nothing: kill -9 during training and during a checkpoint write, a failing disk,
and two processes aiming at one run directory (CLI runs in subprocesses, tiny model, CPU)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from causal_sprites.runs import load_tensors

pytestmark = pytest.mark.slow
#: Long enough that the five kills (each within ~10 steps of a checkpoint) end before the run
#: does, and that every resumed run crosses the tiny preset's evaluation at step 100.
STEPS = 120


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "causal_sprites", "train", "--out", str(out), "--data", str(data),
            "--preset", "tiny", "--steps", str(STEPS), "--checkpoint-every", "5", "--device", "cpu",
            "--no-progress", *extra]  # fmt: skip


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    resume = ("--resume",) if (out / "checkpoint.safetensors").exists() else ()
    return subprocess.Popen(
        train_command(data, out, *resume, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_tensors(a / "model.safetensors"), load_tensors(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(tiny_data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "whole"
    code, err = finish(start(tiny_data_file, out))
    assert code == 0, err
    return out


def test_five_kills_at_random_moments_then_resume_is_bit_identical(
    tiny_data_file: Path, reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    checkpoint = out / "checkpoint.safetensors"
    moments = random.Random(7)
    kills = 0
    for _ in range(5):
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
        process = start(tiny_data_file, out)
        while process.poll() is None and (
            not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before
        ):
            time.sleep(0.01)
        time.sleep(moments.uniform(0.0, 0.3))  # a random moment after this run's first checkpoint
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate()
    assert kills == 5
    code, err = finish(start(tiny_data_file, out))
    assert code == 0, err
    assert same_weights(reference_run, out)
    assert not list(out.glob(".*.tmp"))  # stale temporaries were cleaned up


def test_a_run_killed_before_its_first_checkpoint_starts_afresh_on_resume(
    tiny_data_file: Path, reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "early"
    process = start(tiny_data_file, out, "--checkpoint-every", "100000")
    while process.poll() is None and not (out / "config.json").exists():
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (out / "checkpoint.safetensors").exists()
    relaunch = subprocess.Popen(
        train_command(tiny_data_file, out, "--resume"), stderr=subprocess.PIPE, text=True
    )
    code, err = finish(relaunch)
    assert code == 0 and "no checkpoint yet: starting afresh" in err
    assert same_weights(reference_run, out)


KILL_DURING_CHECKPOINT = """
import os, signal, sys
import safetensors.torch
from causal_sprites import runs
from causal_sprites.cli import main

calls = {"n": 0}
real_save = safetensors.torch.save_file

def dying_save(tensors, filename, metadata=None):
    calls["n"] += 1
    if calls["n"] == 5:  # mid-way through a later checkpoint: half a file, then kill -9
        with open(filename, "wb") as handle:
            handle.write(b"partial" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(tensors, filename, metadata=metadata)

runs.save_file = dying_save
sys.argv = ["causal-sprites", *sys.argv[1:]]
main()
"""


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(
    tiny_data_file: Path, reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = train_command(tiny_data_file, out)[3:]
    process = subprocess.run(
        [sys.executable, "-c", KILL_DURING_CHECKPOINT, *args], capture_output=True, text=True
    )
    assert process.returncode == -signal.SIGKILL
    assert list(out.glob(".*.tmp"))  # the half-written file is under a temporary name only
    assert load_tensors(out / "checkpoint.safetensors")  # the previous checkpoint loads
    code, err = finish(start(tiny_data_file, out))
    assert code == 0, err
    assert same_weights(reference_run, out)


FULL_DISK = """
import errno, sys
import safetensors.torch
from causal_sprites import runs
from causal_sprites.cli import main

calls = {"n": 0}
real_save = safetensors.torch.save_file

def full_disk(tensors, filename, metadata=None):
    calls["n"] += 1
    if calls["n"] == 3:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(tensors, filename, metadata=metadata)

runs.save_file = full_disk
sys.argv = ["causal-sprites", *sys.argv[1:]]
main()
"""


def test_full_disk_is_one_clear_error_and_keeps_the_checkpoint(
    tiny_data_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = train_command(tiny_data_file, out)[3:]
    process = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args], capture_output=True, text=True
    )
    assert process.returncode == 1
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], process.stderr
    assert "previous version is intact" in lines[0]
    assert load_tensors(out / "checkpoint.safetensors")
    assert not list(out.glob(".*.tmp"))


def test_second_trainer_is_refused_and_a_dead_ones_lock_is_not_stuck(
    tiny_data_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = start(tiny_data_file, out, "--steps", "100000")
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(
            train_command(tiny_data_file, out, "--resume"), capture_output=True, text=True
        )
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"error: another process is training into {out}; wait for it or choose another --out"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    code, err = finish(start(tiny_data_file, out))
    assert code == 0, err
    assert os.path.exists(out / "model.safetensors")
