"""The benchmark's leaderboard as markdown, and its HTML page: the leaderboard, the proxies' rank
correlation with the truth, and a few queries side by side (factual | truth | each model's
answer) as inline PNGs. A model that answered a seeded subset of the queries (`seed`) is marked
with a dagger, and a second table scores every model on that subset."""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from causal_sprites.benchmark_checkpoints import cell, checkpoints_html, checkpoints_markdown
from causal_sprites.data.schema import Schema
from causal_sprites.report import png_uri
from causal_sprites.runs import write_text_atomic

STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
    "td.name{text-align:left}img{width:96px;image-rendering:pixelated;border:1px solid #ddd}"
    "figure{display:inline-block;margin:4px;text-align:center;font-size:80%}"
)


#: The mark of a model that answered a seeded subset of the queries.
SUBSET_MARK = "\u2020"


def columns(result: dict[str, Any]) -> list[str]:
    """The leaderboard's metric columns, the error against the truth first; the distance of the
    answers' distribution to the truth's, beside its floor, where some query is unidentified."""
    key = result["truth_metric"]
    shown = [key, f"{key}_identified", "effectiveness", "preservation", "composition_1",
             "composition_10", "reversibility", "realism_fd"]  # fmt: skip
    if any("distribution_tv" in model["metrics"] for model in result["models"]):
        shown += ["distribution_tv", "distribution_tv_floor"]
    return shown


def model_name(model: dict[str, Any]) -> str:
    """A model's name in the tables, marked when it answered a subset of the queries."""
    return model["name"] + (f" {SUBSET_MARK}" if model.get("subset") else "")


def model_status(model: dict[str, Any]) -> str:
    return "ok" if model["status"] == "ok" else f"failed: {model['error']}"


def subset_note(result: dict[str, Any]) -> str:
    """The footnote of a benchmark with a subset contender ('' without one)."""
    if "subset_queries" not in result:
        return ""
    return (
        f"{SUBSET_MARK} answered a seeded subset of {result['subset_queries']:,} of the "
        f"{result['num_queries']:,} queries (`--seed-queries`, the benchmark's `--seed`): its "
        "scores are not those of the full set and it is left out of the proxies' rank "
        "correlations there; the second table scores every model on that subset."
    )


def subset_metrics(model: dict[str, Any]) -> dict[str, Any]:
    """A model's metrics on the subset queries (its own if it answered only those)."""
    return model.get("metrics_on_subset", model["metrics"])


def markdown_table(result: dict[str, Any]) -> str:
    """The leaderboard as a markdown table, one row per model (and with a subset contender, a
    second table: every model on the subset it answered)."""
    key = result["truth_metric"]
    shown = columns(result)
    lines = [
        f"Benchmark on {result['dataset']}: {result['num_queries']:,} queries "
        f"(sha256 {result['query_hash'][:12]}), reader: {result['reader']}",
        "",
        f"{key}, composition_* and reversibility: "
        + ("IoU, higher is better" if key == "truth_iou" else "MAE (0-255), lower is better")
        + "; effectiveness, preservation: fraction read right; realism_fd: lower is better"
        + "; distribution_tv (unidentified queries): lower is better, at best its floor.",
        "",
        "| model | status | " + " | ".join(shown) + " | s / 1000 queries |",
        "|---|---|" + "---:|" * (len(shown) + 1),
    ]
    for model in result["models"]:
        values = [cell(model["metrics"].get(c)) for c in shown]
        lines.append(
            f"| {model_name(model)} | {model_status(model)} | "
            + " | ".join(values)
            + f" | {cell(model['seconds_per_1000'])} |"
        )
    note = subset_note(result)
    if note:
        lines += ["", note, "", f"On the {result['subset_queries']:,} subset queries:", ""]
        lines += ["| model | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
        for model in result["models"]:
            values = [cell(subset_metrics(model).get(c)) for c in shown]
            lines.append(f"| {model_name(model)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n" + checkpoints_markdown(result)


def _png(image: np.ndarray, binary: bool) -> str:
    """A data URI of one uint8 image (H, W) or (H, W, C); binary pixels shown black on white."""
    pixels = (1 - image) * 255 if binary else image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, "PNG")
    return png_uri(buffer.getvalue())


def page(
    result: dict[str, Any],
    shown: dict[str, np.ndarray],
    queries: list[dict[str, Any]],
    schema: Schema,
) -> str:
    """The page's HTML of a benchmark's JSON (`result`), the answers `shown` for a few queries
    (`shown["queries"]` their indices, then factual, truth and one array per model) and the
    query records (`QuerySet.records`) of the data set's `schema`."""
    key = result["truth_metric"]
    board = _html_table(result["models"], columns(result), lambda m: m["metrics"], True)
    note = subset_note(result)
    if note:
        subset = _html_table(result["models"], columns(result), subset_metrics, False)
        board += f"<p>{html.escape(note)}</p><h2>On the subset</h2>{subset}"
    on_subset = result.get("proxy_rank_correlation_subset", {})
    proxies = "".join(
        f"<tr><td class=name>{html.escape(p)}</td><td>{cell(rho)}</td>"
        + (f"<td>{cell(on_subset.get(p))}</td>" if on_subset else "")
        + "</tr>"
        for p, rho in result["proxy_rank_correlation"].items()
    )
    proxy_head = "<th>proxy</th><th>rho</th>" + ("<th>rho on the subset</th>" if on_subset else "")
    names = [n for n in shown if n != "queries"]
    examples = []
    for j, q in enumerate(shown["queries"].tolist()):
        do = ", ".join(f"{k}={schema.factor(k).text(v)}" for k, v in queries[q]["do"].items())
        figures = "".join(
            f"<figure><img src='{_png(shown[n][j], schema.binary)}'><figcaption>{html.escape(n)}"
            "</figcaption></figure>"
            for n in names
        )
        examples.append(
            f"<p>query {q} (row {queries[q]['row']}): do({html.escape(do)})<br>{figures}</p>"
        )
    title = f"Benchmark on {html.escape(result['dataset'])}"
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>{result['num_queries']:,} queries (sha256 {result['query_hash']}); effectiveness "
        f"and preservation read by {html.escape(result['reader'])}.</p>"
        f"{board}<h2>Which proxy ranks the models as the truth does</h2>"
        f"<p>Spearman's rho across the models between each proxy and {html.escape(key)}.</p>"
        f"<table><tr>{proxy_head}</tr>{proxies}</table>{checkpoints_html(result)}"
        f"<h2>Queries side by side</h2>{''.join(examples)}</body></html>\n"
    )


def _html_table(
    models: list[dict[str, Any]],
    shown: list[str],
    metrics: Callable[[dict[str, Any]], dict[str, Any]],
    status: bool,
) -> str:
    """An HTML table of the models' `metrics(model)` in columns `shown` (with their status)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", *(["status"] * status), *shown])
    rows = []
    for model in models:
        cells = "".join(f"<td>{cell(metrics(model).get(c))}</td>" for c in shown)
        said = f"<td class=name>{html.escape(model_status(model))}</td>" if status else ""
        rows.append(f"<tr><td class=name>{html.escape(model_name(model))}</td>{said}{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_page(
    out: Path,
    result: dict[str, Any],
    shown: dict[str, np.ndarray],
    queries: list[dict[str, Any]],
    schema: Schema,
) -> Path:
    """Write DIR/benchmark.html atomically; returns its path."""
    path = out / "benchmark.html"
    write_text_atomic(path, page(result, shown, queries, schema))
    return path
