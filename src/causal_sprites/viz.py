"""Figures (matplotlib `Figure` objects, never `plt.show()`)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from causal_sprites.data.factors import SHAPE_NAMES


def sample_grid_figure(images: np.ndarray, classes: np.ndarray) -> Figure:
    """A grid of images (B, 64, 64), each titled with its factors from classes (B, 5) or (B, 6)."""
    images, classes = np.asarray(images), np.asarray(classes)[:, -5:]
    num = len(images)
    cols = max(1, math.ceil(math.sqrt(num)))
    rows = max(1, math.ceil(num / cols))
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows), layout="constrained")
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.set_axis_off()
        if k < num:
            shape, scale, orientation, pos_x, pos_y = (int(c) for c in classes[k])
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(
                f"{SHAPE_NAMES[shape]} sc{scale} or{orientation}\nx{pos_x} y{pos_y}", fontsize=7
            )
    return fig


def _image_axis(ax: object, image: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")  # type: ignore[attr-defined]
    ax.set_title(title, fontsize=8)  # type: ignore[attr-defined]
    ax.set_axis_off()  # type: ignore[attr-defined]


def image_rows_figure(
    rows: list[tuple[str, np.ndarray]], column_titles: list[str] | None = None
) -> Figure:
    """Rows of images: each row a (label, images (N, 64, 64)) pair, drawn left to right."""
    num_cols = max(len(images) for _, images in rows)
    fig = Figure(figsize=(1.3 * num_cols + 0.8, 1.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), num_cols, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(num_cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(images):
                title = column_titles[c] if column_titles and r == 0 else ""
                _image_axis(ax, images[c], title)
        axes[r, 0].text(-8, 32, label, ha="right", va="center", fontsize=8, rotation=90)
    return fig


def reconstruction_figure(originals: np.ndarray, reconstructions: np.ndarray) -> Figure:
    """Originals (B, 64, 64) above their reconstructions."""
    return image_rows_figure([("original", originals), ("reconstruction", reconstructions)])


def edit_figure(original: np.ndarray, panels: list[tuple[str, np.ndarray]]) -> Figure:
    """One input image followed by titled panels (reconstruction, edits)."""
    images = np.stack([original, *[image for _, image in panels]])
    return image_rows_figure([("", images)], ["input", *[title for title, _ in panels]])


def traversal_figure(rows: list[tuple[str, np.ndarray]]) -> Figure:
    """One row per factor: the same sprite decoded at every value of that factor."""
    return image_rows_figure(rows)


def nelbo_curve_figure(records: list[dict]) -> Figure:
    """Train and test NELBO (nats/image, log scale) against training step, from metrics.jsonl."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    train = [(r["step"], r["train_nelbo"]) for r in records if "train_nelbo" in r]
    test = [(r["step"], r["test_nelbo"]) for r in records if "test_nelbo" in r]
    for points, label, style in ((train, "train NELBO", "-"), (test, "test NELBO", "o-")):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / image")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig
