"""The benchmark's HTML page: the leaderboard, the proxies' rank correlation with the truth, and a
few queries side by side (factual | truth | each model's answer) as inline PNGs."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from causal_sprites.data.schema import Schema
from causal_sprites.report import png_uri
from causal_sprites.runs import write_text_atomic

STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
    "td.name{text-align:left}img{width:96px;image-rendering:pixelated;border:1px solid #ddd}"
    "figure{display:inline-block;margin:4px;text-align:center;font-size:80%}"
)


def _png(image: np.ndarray, binary: bool) -> str:
    """A data URI of one uint8 image (H, W) or (H, W, C); binary pixels shown black on white."""
    pixels = (1 - image) * 255 if binary else image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, "PNG")
    return png_uri(buffer.getvalue())


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


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
    columns = [key, f"{key}_identified", "effectiveness", "preservation", "composition_1",
               "composition_10", "reversibility", "realism_fd"]  # fmt: skip
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", "status", *columns])
    rows = []
    for model in result["models"]:
        status = "ok" if model["status"] == "ok" else f"failed: {model['error']}"
        cells = "".join(f"<td>{_number(model['metrics'].get(c))}</td>" for c in columns)
        rows.append(
            f"<tr><td class=name>{html.escape(model['name'])}</td>"
            f"<td class=name>{html.escape(status)}</td>{cells}</tr>"
        )
    proxies = "".join(
        f"<tr><td class=name>{html.escape(p)}</td><td>{_number(rho)}</td></tr>"
        for p, rho in result["proxy_rank_correlation"].items()
    )
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
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        "<h2>Which proxy ranks the models as the truth does</h2>"
        f"<p>Spearman's rho across the models between each proxy and {html.escape(key)}.</p>"
        f"<table><tr><th>proxy</th><th>rho</th></tr>{proxies}</table>"
        f"<h2>Queries side by side</h2>{''.join(examples)}</body></html>\n"
    )


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
