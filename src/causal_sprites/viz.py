"""Figures: functions return matplotlib `Figure` objects, never open a window; callers save."""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.figure import Figure

from causal_sprites.data.schema import Schema

#: Characters of a row label per line (it runs up the side of one image).
ROW_LABEL_WIDTH = 20


def caption_key(schema: Schema, width: int) -> str:
    """What an image's caption lists, in order, with a continuous factor's unit: `captions:
    angle (degrees), hue`, in lines of at most `width` characters, none splitting a factor."""
    lines = ["captions:"]
    for k, factor in enumerate(schema.factors):
        unit = f" ({factor.unit})" if factor.kind == "continuous" and factor.unit else ""
        item = f"{factor.name}{unit}" + ("," if k < len(schema.factors) - 1 else "")
        if len(lines[-1]) + 1 + len(item) > width:
            lines.append(item)
        else:
            lines[-1] += " " + item
    return "\n".join(lines)


def sample_grid_figure(images: np.ndarray, classes: np.ndarray, schema: Schema) -> Figure:
    """A grid of images (B, H, W) or (B, H, W, 3), each titled with its factors (B, K) as the
    schema names them (the key to the captions on top)."""
    images, titles = np.asarray(images), [schema.caption(row) for row in np.asarray(classes)]
    num = len(images)
    cols = max(1, math.ceil(math.sqrt(num)))
    rows = max(1, math.ceil(num / cols))
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows + 0.3), layout="constrained")
    fig.suptitle(caption_key(schema, max(30, 17 * cols)), fontsize=7)
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        ax.set_axis_off()
        if k < num:
            _image_axis(ax, images[k], titles[k])
            ax.title.set_fontsize(7)
    return fig


def _image_axis(ax: object, image: np.ndarray, title: str) -> None:
    """An image as it is: colour (H, W, 3) as RGB, grey (H, W) on 0..1 if binary, else 0..255."""
    image = np.asarray(image)
    if image.ndim == 3:
        ax.imshow(image, interpolation="nearest")  # type: ignore[attr-defined]
    else:
        top = 1 if image.max(initial=0) <= 1 else 255
        ax.imshow(image, cmap="gray", vmin=0, vmax=top, interpolation="nearest")  # type: ignore[attr-defined]
    ax.set_title(title, fontsize=8)  # type: ignore[attr-defined]
    ax.set_axis_off()  # type: ignore[attr-defined]


def _row_label(ax: object, image: np.ndarray, text: str, size: int) -> None:
    """A row's label, turned and wrapped to the image's height, left of its first image."""
    middle = np.asarray(image).shape[0] / 2
    lines = textwrap.fill(text, ROW_LABEL_WIDTH)
    ax.text(  # type: ignore[attr-defined]
        -8, middle, lines, ha="right", va="center", fontsize=size, rotation=90,
        multialignment="center",
    )  # fmt: skip


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
        _row_label(axes[r, 0], images[0], label, 8)
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


def difference_map(factual: np.ndarray, counterfactual: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) in [0, 1] of two images: binary (H, W) ones with kept pixels gray, removed
    red, added green; grey or colour ones with each pixel's absolute change (mean over the
    channels) in red."""
    factual, counterfactual = np.asarray(factual), np.asarray(counterfactual)
    if factual.ndim == 3 or max(factual.max(initial=0), counterfactual.max(initial=0)) > 1:
        change = np.abs(factual.astype(float) - counterfactual.astype(float)) / 255
        change = change.mean(-1) if change.ndim == 3 else change
        return np.stack([change, 0.15 * change, 0.15 * change], -1)
    a, b = factual.astype(bool), counterfactual.astype(bool)
    rgb = np.zeros((*a.shape, 3))
    rgb[a & b] = 0.6
    rgb[a & ~b] = (1.0, 0.2, 0.2)
    rgb[~a & b] = (0.2, 1.0, 0.2)
    return rgb


def counterfactual_figure(
    factual: np.ndarray,
    counterfactual: np.ndarray,
    labels: list[str] | None = None,
    truth: np.ndarray | None = None,
) -> Figure:
    """One row per query: factual | counterfactual | (the true counterfactual, where known) |
    difference map of factual and counterfactual (`difference_map`), images (B, H, W) or
    (B, H, W, 3); `labels` name the rows (e.g. the do())."""
    factual, counterfactual = np.asarray(factual), np.asarray(counterfactual)
    num, shown = len(factual), [("factual", factual), ("counterfactual", counterfactual)]
    if truth is not None:
        shown.append(("true counterfactual", np.asarray(truth)))
    fig = Figure(figsize=(1.5 * len(shown) + 1.6, 1.5 * num + 0.3), layout="constrained")
    axes = fig.subplots(num, len(shown) + 1, squeeze=False)
    for r in range(num):
        for c, (title, images) in enumerate(shown):
            _image_axis(axes[r, c], images[r], title if r == 0 else "")
        last = axes[r, len(shown)]
        last.imshow(difference_map(factual[r], counterfactual[r]), interpolation="nearest")
        last.set_title("difference" if r == 0 else "", fontsize=8)
        last.set_axis_off()
        if labels:
            _row_label(axes[r, 0], factual[r], labels[r], 7)
    return fig


def counterfactual_distribution_figure(
    factual: np.ndarray,
    classes: list[np.ndarray],
    probabilities: list[np.ndarray],
    images: list[np.ndarray],
    pixel_probs: np.ndarray,
    labels: list[str] | None = None,
    num_tuples: int = 4,
) -> Figure:
    """One row per query: factual (B, 64, 64) | P(pixel on) of the counterfactual (B, 64, 64) |
    the most probable counterfactual tuples' images with their probabilities."""
    num = len(factual)
    fig = Figure(figsize=(2.0 + 1.2 * (num_tuples + 1), 1.5 * num + 0.4), layout="constrained")
    axes = fig.subplots(num, num_tuples + 2, squeeze=False)
    for r in range(num):
        _image_axis(axes[r, 0], factual[r], "factual")
        axes[r, 1].imshow(pixel_probs[r], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 1].set_title("P(pixel on)", fontsize=8)
        axes[r, 1].set_axis_off()
        for k in range(num_tuples):
            ax = axes[r, k + 2]
            if k < len(probabilities[r]):
                tuple_text = ",".join(str(int(c)) for c in classes[r][k])
                _image_axis(ax, images[r][k], f"p {probabilities[r][k]:.2f}\n({tuple_text})")
            else:
                ax.set_axis_off()
        if labels:
            _row_label(axes[r, 0], factual[r], labels[r], 7)
    return fig


def query_samples_figure(
    images: np.ndarray,
    classes: np.ndarray,
    marginals: dict[str, np.ndarray],
    title: str,
    schema: Schema,
    continuous: dict[str, dict[str, float]] | None = None,
) -> Figure:
    """Bars of the per-factor marginals {factor: (K,)} (ticked with class names where a factor
    has a few named ones) and a continuous factor's quantiles (5-95 % line, 25-75 % box, median)
    next to a grid of the sampled images (N, H, W) or (N, H, W, 3) with their factors (N, K): a
    conditioning or intervention query."""
    fig = Figure(figsize=(11, 6), layout="constrained")
    fig.suptitle(title, fontsize=10)
    left, right = fig.subfigures(1, 2, width_ratios=(1, 1.6), squeeze=False)[0]
    continuous = continuous or {}
    if continuous:
        left.suptitle("values: median (black), 25-75 % (box), 5-95 % (line)", fontsize=7)
    right.suptitle(caption_key(schema, 110), fontsize=7)
    axes = left.subplots(len(marginals) + len(continuous), 1, squeeze=False)[:, 0]
    for ax, (name, summary) in zip(axes[len(marginals) :], continuous.items(), strict=True):
        factor = schema.factor(name)
        ax.hlines(0, summary["q05"], summary["q95"], color="tab:blue")
        ax.barh(0, summary["q75"] - summary["q25"], left=summary["q25"], height=0.5, alpha=0.6)
        ax.vlines(summary["q50"], -0.3, 0.3, color="black")
        ax.set_xlim(factor.low, factor.high)
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=8)
        ax.set_xlabel(factor.unit, fontsize=6)
        ax.tick_params(labelsize=6)
    for ax, (name, probs) in zip(axes, marginals.items(), strict=False):
        probs = np.asarray(probs)
        ax.bar(np.arange(len(probs)), probs, color="tab:blue", width=0.8)
        ax.set_ylim(0, max(1e-9, float(probs.max())) * 1.1)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=6)
        names = schema.factor(name).classes
        if len(names) <= 6 and not all(n.isdigit() for n in names):
            ax.set_xticks(range(len(names)), names)
    images, titles = np.asarray(images), [schema.caption(row) for row in np.asarray(classes)]
    num = len(images)
    cols = max(1, math.ceil(math.sqrt(num)))
    rows = max(1, math.ceil(num / cols))
    for k, ax in enumerate(right.subplots(rows, cols, squeeze=False).flat):
        ax.set_axis_off()
        if k < num:
            _image_axis(ax, images[k], titles[k])
            ax.title.set_fontsize(6)
    return fig
