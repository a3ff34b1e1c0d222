"""Compute and save the standard figures of a run (used by `demo` and the report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS, SHAPE_NAMES, SIZES
from causal_sprites.runs import atomic_path, read_metrics
from causal_sprites.scm.queries import CausalModel
from causal_sprites.viz import (
    counterfactual_figure,
    edit_figure,
    nelbo_curve_figure,
    query_samples_figure,
    reconstruction_figure,
    sample_grid_figure,
    traversal_figure,
)

#: Values shown per factor in traversals (every value of the small factors, a sweep of the rest).
TRAVERSAL_STEPS = {"shape": 1, "scale": 1, "orientation": 4, "posX": 4, "posY": 4}


def save_figure(fig: Figure, out: Path) -> Path:
    """Save a figure as PNG atomically; returns `out`."""
    with atomic_path(out) as temporary:
        fig.savefig(temporary, format="png", dpi=110)
    return out


def traversal_rows(
    model: CausalModel, image: np.ndarray, classes: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """For each factor, the image's z decoded at a sweep of that factor's values, others fixed."""
    z = model.encode(image[None], classes[None])
    rows = []
    for i, name in enumerate(FACTORS):
        values = np.arange(0, SIZES[i], TRAVERSAL_STEPS[name])
        labels = np.repeat(classes[None, -5:], len(values), axis=0)
        labels[:, i] = values
        rows.append((name, model.decode(labels, z.expand(len(values), -1))))
    return rows


def write_run_figures(
    model: CausalModel, data: DSprites, out_dir: Path, seed: int = 0
) -> dict[str, Path]:
    """Samples, reconstructions, an edit (shape, then orientation), traversals, the NELBO curve."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data), size=8, replace=False))
    images, classes = data.images(rows), data.classes(rows)[:, 1:]
    paths = {
        "samples": save_figure(
            sample_grid_figure(images, classes, model.schema), out_dir / "samples.png"
        ),
        "reconstructions": save_figure(
            reconstruction_figure(images, model.reconstruct(images, classes)),
            out_dir / "reconstructions.png",
        ),
    }
    source = rows[0]
    image, label = data.images([source]), data.classes([source])[:, 1:]
    heart = {"shape": SHAPE_NAMES.index("heart")}
    turned = {**heart, "orientation": 15}
    panels = [
        ("reconstruction", model.reconstruct(image, label)[0]),
        ("shape=heart", model.edit(image, label, heart)[0]),
        ("+ orientation=15", model.edit(image, label, turned)[0]),
    ]
    paths["edit"] = save_figure(edit_figure(image[0], panels), out_dir / "edit.png")
    paths["traversals"] = save_figure(
        traversal_figure(traversal_rows(model, image[0], label[0])), out_dir / "traversals.png"
    )
    paths.update(write_query_figures(model, data, out_dir, rows[:4]))
    if model.run_dir is not None and read_metrics(model.run_dir):
        curve = nelbo_curve_figure(read_metrics(model.run_dir))
        paths["nelbo"] = save_figure(curve, out_dir / "nelbo.png")
    return paths


def write_query_figures(
    model: CausalModel, data: DSprites, out_dir: Path, rows: np.ndarray, seed: int = 0
) -> dict[str, Path]:
    """One conditioning (scale = 5), one intervention (posX = 31) and one counterfactual
    (shape = heart) of the given data rows, each as a figure."""
    conditioned = model.condition_query({"scale": 5}, num_samples=16, seed=seed)
    intervened = model.intervene_query({"posX": 31}, num_samples=16, seed=seed)
    images, classes = data.images(rows), data.classes(rows)[:, 1:]
    counterfactual = model.counterfactual_query(images, classes, do={"shape": "heart"}, seed=seed)
    return {
        "condition": save_figure(
            query_samples_figure(
                conditioned.images,
                conditioned.classes,
                conditioned.marginals,
                "given scale = 5",
                model.schema,
            ),
            out_dir / "condition.png",
        ),
        "intervene": save_figure(
            query_samples_figure(
                intervened.images,
                intervened.classes,
                intervened.marginals,
                "do(posX = 31)",
                model.schema,
            ),
            out_dir / "intervene.png",
        ),
        "counterfactual": save_figure(
            counterfactual_figure(images, counterfactual.images, ["do(shape = heart)"] * len(rows)),
            out_dir / "counterfactual.png",
        ),
    }


def write_json(path: Path, payload: dict) -> Path:
    """Write a JSON file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2))
    return path
