"""Which proxy ranks the checkpoints of one training as the truth does: the benchmark's runs that
are checkpoints of one training (byte-identical config.json), and Spearman's rho across them
between each proxy and the error against the truth; `Snapshots` keeps such checkpoints of a run
(a `train.fit` step hook: loadable copies of the run directory at chosen steps or seconds)."""

from __future__ import annotations

import html
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from scipy import stats

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    read_metrics,
    resolve_run,
    save_tensors_atomic,
    write_text_atomic,
)

#: What a snapshot directory records beside the run's files: {"of", "step", "seconds"}.
SNAPSHOT_FILE: Final = "snapshot.json"
#: The fewest scored checkpoints a rank correlation is given for.
MIN_CHECKPOINTS: Final = 3

#: (config.json text, step) of a run named by `--model`, or None where it is not a run directory.
Describe = Callable[[str], tuple[str, int | None] | None]


def run_step(run_dir: Path) -> int | None:
    """The optimiser step a run's weights are from: its snapshot's, else the last step its
    metrics.jsonl records (the final record of a finished run); None when neither says."""
    snapshot = run_dir / SNAPSHOT_FILE
    if snapshot.is_file():
        try:
            return int(json.loads(snapshot.read_text())["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
    steps = [r["step"] for r in read_metrics(run_dir) if isinstance(r.get("step"), int)]
    return max(steps) if steps else None


def describe_run(name: str) -> tuple[str, int | None] | None:
    """The config.json text and the step of the run `name` (a directory or `pretrained`)."""
    try:
        path = resolve_run(name)
    except CausalSpritesError:
        return None
    config = path / CONFIG_FILE
    return (config.read_text(), run_step(path)) if config.is_file() else None


def checkpoint_series(
    models: Sequence[dict[str, Any]], describe: Describe = describe_run
) -> list[list[tuple[dict[str, Any], int | None]]]:
    """The benchmark's entries (`result["models"]`) that are checkpoints of one training: runs
    (kind "run", answering every query) whose config.json is byte for byte the same, in groups
    of 2 or more, each ordered by step (a step nobody recorded last), with the step."""
    groups: dict[str, list[tuple[dict[str, Any], int | None]]] = {}
    for entry in models:
        if entry.get("kind") != "run" or entry.get("subset"):  # a subset's scores differ
            continue
        described = describe(entry["name"])
        if described is not None:
            groups.setdefault(described[0], []).append((entry, described[1]))
    series = [g for g in groups.values() if len(g) > 1]
    return [sorted(g, key=lambda m: (m[1] is None, m[1] or 0)) for g in series]


def spearman(first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho of two equally long samples: Pearson's correlation of their ranks (ties
    share the mean rank); across checkpoints here, across models in `benchmark`."""
    a, b = stats.rankdata(first), stats.rankdata(second)
    return float(np.corrcoef(a, b)[0, 1])


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def correlate(
    checkpoints: Sequence[tuple[dict[str, Any], int | None]],
    truth_key: str,
    proxies: Sequence[str],
) -> dict[str, Any]:
    """One training's entry of `proxies_across_checkpoints`: its checkpoints (name, step, status,
    the truth's score), and per proxy Spearman's rho across the scored checkpoints with
    `truth_key`, or None with the reason in `why_null`."""
    listed = [
        {
            "name": entry["name"],
            "step": step,
            "status": entry["status"],
            truth_key: _number(entry.get("metrics", {}).get(truth_key)),
        }
        for entry, step in checkpoints
    ]
    rho: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for proxy in proxies:
        pairs = [
            (_number(entry["metrics"].get(proxy)), _number(entry["metrics"].get(truth_key)))
            for entry, _ in checkpoints
            if entry["status"] == "ok"
        ]
        kept = [(a, b) for a, b in pairs if a is not None and b is not None]
        rho[proxy] = None
        if len(kept) < MIN_CHECKPOINTS:
            why[proxy] = (
                f"{len(kept)} of {len(checkpoints)} checkpoints scored with {proxy} and "
                f"{truth_key}; a rank correlation needs at least {MIN_CHECKPOINTS}"
            )
        elif len({a for a, _ in kept}) == 1:
            why[proxy] = f"{proxy} is the same at every checkpoint"
        elif len({b for _, b in kept}) == 1:
            why[proxy] = f"{truth_key} is the same at every checkpoint"
        else:
            rho[proxy] = spearman([a for a, _ in kept], [b for _, b in kept])
    return {"checkpoints": listed, "truth_metric": truth_key, "rho": rho, "why_null": why}


def across_checkpoints(
    models: Sequence[dict[str, Any]],
    truth_key: str,
    proxies: Sequence[str],
    describe: Describe = describe_run,
) -> list[dict[str, Any]]:
    """`proxies_across_checkpoints` of a benchmark's JSON: one entry (`correlate`) per training
    of which two or more checkpoints were benchmarked; [] when none was."""
    return [correlate(s, truth_key, proxies) for s in checkpoint_series(models, describe)]


def cell(value: Any) -> str:
    """A table cell of a score: three decimals, empty for None."""
    return "" if value is None else f"{value:.3f}"


def _steps(series: dict[str, Any]) -> str:
    return ", ".join("?" if c["step"] is None else f"{c['step']:,}" for c in series["checkpoints"])


def checkpoints_markdown(result: dict[str, Any]) -> str:
    """The markdown section of `proxies_across_checkpoints` ("" when the JSON has none)."""
    lines: list[str] = []
    for series in result.get("proxies_across_checkpoints") or []:
        names = ", ".join(c["name"] for c in series["checkpoints"])
        lines += [
            "",
            f"Across the checkpoints of one training ({names}; steps {_steps(series)}): "
            f"Spearman's rho between each proxy and {series['truth_metric']}.",
            "",
            "| proxy | rho across checkpoints | why none |",
            "|---|---:|---|",
        ]
        for proxy, rho in series["rho"].items():
            lines.append(f"| {proxy} | {cell(rho)} | {series['why_null'].get(proxy, '')} |")
    return "\n".join(lines) + "\n" if lines else ""


def checkpoints_html(result: dict[str, Any]) -> str:
    """The HTML section of `proxies_across_checkpoints` ("" when the JSON has none), for the
    benchmark's page."""
    parts = []
    for series in result.get("proxies_across_checkpoints") or []:
        names = html.escape(", ".join(c["name"] for c in series["checkpoints"]))
        rows = "".join(
            f"<tr><td class=name>{html.escape(p)}</td><td>{cell(rho)}</td>"
            f"<td class=name>{html.escape(series['why_null'].get(p, ''))}</td></tr>"
            for p, rho in series["rho"].items()
        )
        parts.append(
            f"<p>Spearman's rho across the checkpoints of one training ({names}; steps "
            f"{_steps(series)}) between each proxy and {html.escape(series['truth_metric'])}.</p>"
            f"<table><tr><th>proxy</th><th>rho</th><th>why none</th></tr>{rows}</table>"
        )
    if not parts:
        return ""
    return "<h2>Which proxy ranks the checkpoints as the truth does</h2>" + "".join(parts)


def snapshot_dir(run_dir: Path, step: int) -> Path:
    """Where `Snapshots` keeps the run at `step`: a sibling, RUN-step000123."""
    return run_dir.with_name(f"{run_dir.name}-step{step:06d}")


def take_snapshot(run_dir: Path, step: int, model: ConditionalVAE, seconds: float) -> Path:
    """A loadable copy of the run in training at `step`: its config.json (byte for byte), the
    weights now, its metrics so far and `snapshot.json`; returns the directory."""
    out = snapshot_dir(run_dir, step)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / CONFIG_FILE, out / CONFIG_FILE)
    if (run_dir / METRICS_FILE).is_file():
        shutil.copyfile(run_dir / METRICS_FILE, out / METRICS_FILE)
    state = dict(model.state_dict())  # as runs.save_model writes it: reads, draws nothing
    save_tensors_atomic(out / MODEL_FILE, state, {"format": "causal-sprites"})
    record = {"of": str(run_dir), "step": step, "seconds": seconds}
    write_text_atomic(out / SNAPSHOT_FILE, json.dumps(record) + "\n")
    return out


@dataclass
class Snapshots:
    """`fit(..., on_step=Snapshots(run_dir, steps=[...]))` keeps the run at those steps, or at
    the first step after each of `seconds` (wall clock from the first step, so a little behind
    fit's `elapsed`, which also counts its set-up). It only reads the weights, so the run trains
    exactly as without it (its writes add a few milliseconds to a time-limited run's clock).
    `taken` lists (step, seconds, directory)."""

    run_dir: Path
    steps: Sequence[int] = ()
    seconds: Sequence[float] = ()
    taken: list[tuple[int, float, Path]] = field(default_factory=list)
    _start: float | None = None

    def __call__(self, step: int, model: ConditionalVAE) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        clock = now - self._start
        done = {s for s, _, _ in self.taken}
        wanted = step in self.steps or any(
            clock >= limit and not any(t >= limit for _, t, _ in self.taken)
            for limit in self.seconds
        )
        if wanted and step not in done:
            self.taken.append((step, clock, take_snapshot(self.run_dir, step, model, clock)))
