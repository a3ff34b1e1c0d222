"""The HTML report of a run (`causal-sprites report RUN`): data, training, reconstructions, causal
queries, counterfactual soundness, discovery and environment in one self-contained page, rendered
from a Jinja2 template with every figure embedded as a base64 PNG."""

from __future__ import annotations

import base64
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader

from causal_sprites.continuous_scores import score_continuous_counterfactuals
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.pictures import size_text
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.data.variants import variant_of
from causal_sprites.discovery import discover, discover_from_images
from causal_sprites.errors import CausalSpritesError
from causal_sprites.evaluation import evaluate, evaluate_counterfactuals
from causal_sprites.figures import classes_are_indices, query_titles, write_run_figures
from causal_sprites.oracle import load_oracle
from causal_sprites.report_tables import Table, fmt, metric_tables
from causal_sprites.runs import PRETRAINED_DIR, read_metrics, write_text_atomic
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.scores import readout_warning, score_image_counterfactuals
from causal_sprites.truth import truth_of

REPORT_FILE = "report.html"
#: Section ids and titles, in page order (the browser test checks each is there).
SECTIONS = (
    ("data", "Data"),
    ("training", "Training"),
    ("reconstructions", "Reconstructions"),
    ("queries", "Causal queries"),
    ("soundness", "Soundness"),
    ("discovery", "Discovery"),
    ("environment", "Environment"),
)
#: Rows of factor labels PC runs on, and images whose factors the posterior p(y | x) reads for
#: it (seconds on a well-trained model; a weak 4-minute model escalates its search on most
#: images and reads about 4 a second).
DISCOVERY_SAMPLES = 100_000
DISCOVERY_IMAGES = 1_000
#: Captions of the figures `write_run_figures` draws (the demo's figures).
CAPTIONS = {
    "samples": "Random images of the data with their factors.",
    "nelbo": "Train and test NELBO (nats per image) during training.",
    "reconstructions": "Images (top) and their reconstructions (bottom).",
    "edit": "An edit: the same z decoded with other labels.",
    "traversals": "Traversals: one factor swept, the others and z fixed.",
}
PACKAGES = ("causal-sprites", "torch", "pyro-ppl", "chirho", "numpy", "matplotlib", "jinja2")


@dataclass(frozen=True)
class Embedded:
    """A figure as a data: URI with its caption."""

    uri: str
    caption: str


def captions(schema: Schema, truth: bool = False) -> dict[str, str]:
    """Every figure's caption, the queries' from `figures.query_titles` (on dSprites:
    conditioning on scale = 5, do(posX = 31), do(shape = heart)); `truth`: the counterfactual
    figure shows the true counterfactual too."""
    titles = query_titles(schema)
    change = "red removed, green added" if schema.binary else "each pixel's change in red"
    posterior = (
        "the exact posterior over the factors"
        if schema.categorical
        else "the posterior over the factors (drawn from the factor SCM, kept where the evidence "
        "holds; values as median, quartiles and 5-95 %)"
    )
    true = " | the true counterfactual (the data's generator)" if truth else ""
    return {
        **CAPTIONS,
        "condition": f"Conditioning on {titles['condition']}: {posterior}, and samples.",
        "intervene": f"Intervention {titles['intervene']}: the factors' marginals, and samples.",
        "counterfactual": f"Counterfactuals under {titles['counterfactual']}: factual | "
        f"counterfactual{true} | difference of factual and counterfactual ({change}).",
    }


def factor_summary(factor: Factor) -> str:
    """`hue (3: red, green, blue)`, `scale (6)` where classes are their indices, or
    `angle (-40..44 degrees)` for a continuous factor."""
    if factor.kind == "continuous":
        unit = f" {factor.unit}" if factor.unit else ""
        return f"{factor.name} ({factor.low:g}..{factor.high:g}{unit})"
    if classes_are_indices(factor):
        return f"{factor.name} ({factor.size})"
    names = ", ".join(factor.classes[:6]) + (", ..." if factor.size > 6 else "")
    return f"{factor.name} ({factor.size}: {names})"


def data_summary(data: DSprites | Dataset) -> str:
    """One sentence on the data: image count, size and kind, and each factor of its schema."""
    schema = data.schema
    height, width, channels = schema.image_shape
    kind = "binary" if schema.binary else ("colour" if channels == 3 else "grey")
    factors = "; ".join(factor_summary(f) for f in schema.factors)
    return f"{schema.name}: {len(data):,} {kind} images of {size_text(height, width)}; {factors}."


def default_path(model: CausalModel) -> Path:
    """RUN/report.html; for the run shipped inside the package, report-pretrained.html in the
    working directory (the package's own folder may be read-only and is no place for output)."""
    if model.run_dir is None:
        raise CausalSpritesError("give `out` for a model without a run directory")
    if model.run_dir.resolve() == PRETRAINED_DIR.resolve():
        return Path.cwd() / "report-pretrained.html"
    return model.run_dir / REPORT_FILE


def png_uri(png: bytes) -> str:
    """PNG bytes as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def graph_svg(edges: list[dict[str, Any]], uid: str, names: Sequence[str]) -> str:
    """The factor graph as inline SVG: the factors `names` on a circle, `edges` [{from, to,
    directed}] as arrows or plain lines (undirected CPDAG edges)."""
    width, height, radius, rx, ry = 340, 300, 112, 46, 18
    centre = (width / 2, height / 2)
    spots = {
        name: (
            centre[0] + radius * math.sin(2 * math.pi * k / len(names)),
            centre[1] - radius * math.cos(2 * math.pi * k / len(names)),
        )
        for k, name in enumerate(names)
    }

    def rim(x: float, y: float, dx: float, dy: float) -> tuple[float, float]:
        """Where the ray from an ellipse's centre along (dx, dy) leaves it (and 3 px more)."""
        t = 1 / math.hypot(dx / rx, dy / ry) + 3 / math.hypot(dx, dy)
        return x + dx * t, y + dy * t

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="discovered graph">',
        f'<defs><marker id="arrow-{uid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>',
    ]
    for edge in edges:
        (x1, y1), (x2, y2) = spots[edge["from"]], spots[edge["to"]]
        ax, ay = rim(x1, y1, x2 - x1, y2 - y1)
        bx, by = rim(x2, y2, x1 - x2, y1 - y2)
        head = f' marker-end="url(#arrow-{uid})"' if edge["directed"] else ""
        parts.append(
            f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}" stroke="#333" '
            f'stroke-width="1.6"{head}/>'
        )
    for name, (x, y) in spots.items():
        parts.append(
            f'<ellipse cx="{x:.1f}" cy="{y:.1f}" rx="{rx}" ry="{ry}" fill="#e8f0fe" '
            f'stroke="#0b57d0"/><text x="{x:.1f}" y="{y + 4:.1f}" '
            f'text-anchor="middle">{name}</text>'
        )
    if not edges:
        parts.append(
            f'<text x="{centre[0]:.0f}" y="{centre[1] + 4:.0f}" text-anchor="middle" '
            'fill="#666">no edges</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def default_bench_dir() -> Path | None:
    """`bench/results` of the working directory, else of the source checkout, if either exists."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "bench" / "results").is_dir():
            return root / "bench" / "results"
    return None


def fidelity_table(bench: Path | None) -> Table | None:
    """The generator's fidelity against real frames, from bench/results/data.json."""
    path = bench / "data.json" if bench is not None else None
    if path is None or not path.is_file():
        return None
    fidelity = json.loads(path.read_text()).get("fidelity", {})
    keys = ("num_images", "exact_matches", "mean_iou_at_label", "max_pixels_off")
    return Table(
        ["frames", *keys],
        [[name, *(fmt(v.get(k, "")) for k in keys)] for name, v in fidelity.items()],
    )


def baseline_tables(bench: Path | None) -> list[tuple[str, Table]]:
    """The training benchmarks (bench/train.py): one table per bench/results/train-*.json."""
    if bench is None:
        return []
    keys = (
        "preset",
        "steps",
        "train_seconds",
        "test_nelbo",
        "test_recon",
        "test_kl",
        "images_per_s",
        "fraction_of_matmul_peak",
    )
    tables = []
    for path in sorted(bench.glob("train-*.json")):
        results = json.loads(path.read_text()).get("results", [])
        rows = [[fmt(result.get(k, "")) for k in keys] for result in results]
        tables.append((path.name, Table(list(keys), rows)))
    return tables


def run_table(model: CausalModel, records: list[dict[str, Any]]) -> Table:
    """What was trained and for how long."""
    config, last = model.config, records[-1] if records else {}
    graph = ", ".join(f"{a}->{b}" for a, b in config.graph) or "none (independent factors)"
    rows = [
        ["run", str(model.run_dir or "in memory")],
        ["decoder", f"{config.model.decoder}, z_dim {config.model.z_dim}"],
        ["factor graph", graph],
        ["data", config.data or "the default data"],
        ["batch size, learning rate", f"{config.train.batch_size}, {config.train.lr}"],
        ["bfloat16 autocast", str(config.train.bf16)],
        ["steps", fmt(last.get("step", "n/a"))],
        ["epochs", fmt(last.get("epoch", "n/a"))],
        ["training time (s)", fmt(last.get("elapsed", "n/a"))],
    ]
    return Table(["", ""], rows)


def environment_table(model: CausalModel, records: list[dict[str, Any]], seconds: float) -> Table:
    """Versions (now, and as recorded at training time), device and durations."""
    rows = [["python", platform.python_version()]]
    for name in PACKAGES:
        try:
            now = metadata.version(name)
        except metadata.PackageNotFoundError:
            now = "not installed"
        trained = model.config.libraries.get(name)
        rows.append([name, now if trained in (None, now) else f"{now} (trained with {trained})"])
    device = model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    rows += [
        ["device", f"{device} ({name})"],
        ["torch threads, CPUs", f"{torch.get_num_threads()}, {os.cpu_count()}"],
        ["platform", platform.platform()],
        ["training time (s)", fmt(records[-1].get("elapsed", "n/a")) if records else "n/a"],
        ["report time (s)", fmt(seconds)],
    ]
    return Table(["", ""], rows)


def soundness_kind(data: DSprites | Dataset) -> str:
    """What the soundness section scores against: `dsprites` (the oracle), `truth` (a data set
    whose generator is known: its true render) or `data` (the data's own image)."""
    if isinstance(data, DSprites):
        return "dsprites"
    return "data" if truth_of(data) is None else "truth"


def soundness_metrics(
    model: CausalModel, data: DSprites | Dataset, seed: int
) -> dict[str, Any] | str:
    """Counterfactual soundness read back by the shipped oracle (on a causal variant, against the
    truth from its recorded noise); on data whose generator is known (the pendulum), against
    its true render; on other data, against the data's own image at the changed factors where
    it holds every factor combination once; or why it cannot be measured."""
    if not isinstance(data, DSprites):
        truth = truth_of(data)
        try:
            if truth is not None:
                return score_continuous_counterfactuals(model, data, truth, seed=seed).to_json()
            return score_image_counterfactuals(model, data, seed=seed).to_json()
        except CausalSpritesError as error:
            return str(error)
    try:
        oracle = load_oracle("pretrained")
    except CausalSpritesError as error:
        return f"no oracle classifier to read counterfactuals back ({error})"
    return evaluate_counterfactuals(model, data, oracle, variant_of(model.config.data), seed=seed)


def true_graph(schema: Schema) -> list[tuple[str, str]] | None:
    """The true factor graph a generated data set records in its schema (the pendulum's), else
    None."""
    edges = schema.extra.get("graph")
    return None if edges is None else [(str(a), str(b)) for a, b in edges]


def _discoveries(model: CausalModel, data: DSprites | Dataset, seed: int) -> list[dict[str, Any]]:
    """PC on the data's factor labels, and on factors drawn from the run's posterior p(y | x)
    of each image: the pixels alone; each, where it cannot run, with the reason (`missing`);
    each factor tested as its kind says, and scored against the data's true graph where it
    records one."""
    schema = data.schema
    truth = true_graph(schema)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data), min(len(data), DISCOVERY_IMAGES), replace=False))
    runs = [
        ("From the factor labels", "labels"),
        ("From the pixels alone (factors drawn from the model's posterior p(y | x))", "pixels"),
    ]
    out: list[dict[str, Any]] = []
    for title, uid in runs:
        try:
            if uid == "labels":
                labels = data.factors(slice(None))
                kinds = [f.kind for f in schema.factors]
                result = discover(
                    labels, truth, max_samples=DISCOVERY_SAMPLES, seed=seed, names=schema.names,
                    kinds=kinds,
                )  # fmt: skip
            else:
                result = discover_from_images(model, data.images(rows), truth, seed=seed)
        except CausalSpritesError as error:  # too few rows, say: the section says why
            out.append({"title": title, "missing": str(error)})
            continue
        default_test = result.get("test", "chisq")
        tests = Table(
            ["a", "b", "test", "p-value", "Cramér's V"],
            [
                [t["a"], t["b"], t.get("test", default_test), fmt(t["p_value"]),
                 fmt(t.get("cramers_v", "n/a"))]
                for t in result["tests"]
            ],
        )  # fmt: skip
        edges = result["edges"]
        found = ", ".join(f"{e['from']} {'->' if e['directed'] else '--'} {e['to']}" for e in edges)
        summary = (
            f"PC (alpha {fmt(result.get('alpha', 'n/a'))}; pairs tested as the table says, "
            f"conditional tests {_conditional_tests(result, default_test)}) on "
            f"{fmt(result['num_samples'])} rows: "
            f"{found or 'no edges: the factors are independent'}."
        )
        if result.get("shd") is not None:
            summary += f" SHD to the data's true graph: {result['shd']}."
        if result.get("num_stopped_on_budget"):
            summary += (
                f" The factors of {result['num_stopped_on_budget']} of {len(rows)} images were "
                "read by a search that stopped on its budget: this graph is not to be trusted."
            )
        graph = graph_svg(edges, uid, data.schema.names)
        out.append({"title": title, "graph": graph, "tests": tests, "summary": summary})
    return out


def _conditional_tests(result: Mapping[str, Any], default: str) -> str:
    """The tests PC's conditional independence steps used: `rcit`, `chisq`, or `none` (no
    conditional step ran)."""
    used = sorted({t.get("test", default) for t in result.get("ci_tests", []) if t.get("given")})
    return ", ".join(used) or "none"


def write_report(
    run: CausalModel | str | Path,
    data: DSprites | Dataset,
    out: Path | None = None,
    *,
    scores: Mapping[str, Any] | None = None,
    soundness: Mapping[str, Any] | None = None,
    bench: Path | None = None,
    seed: int = 0,
) -> Path:
    """Write the report of a run (a CausalModel, a run directory or `pretrained`) on `data` to
    `out` (default: `default_path`) atomically; returns its path. `scores` (`evaluate`) and
    `soundness` (`evaluate_counterfactuals`) reuse metrics already computed, else they are computed
    here; `bench` is bench/results (default: `default_bench_dir()`). On data other than dSprites
    the sections that need dSprites (the generator's fidelity, the training benchmarks, soundness
    where the data does not hold its own truth) say why they are not available."""
    start = time.perf_counter()
    model = run if isinstance(run, CausalModel) else load_run(run)
    out = out if out is not None else default_path(model)
    bench = bench if bench is not None else default_bench_dir()
    records = read_metrics(model.run_dir) if model.run_dir is not None else []
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_run_figures(model, data, Path(tmp), seed=seed)
        pngs = {name: path.read_bytes() for name, path in paths.items()}
    texts = captions(model.schema, truth_of(data) is not None)
    figures = {name: Embedded(png_uri(png), texts.get(name, name)) for name, png in pngs.items()}
    if scores is None:
        try:
            scores = evaluate(model, data, seed=seed)
        except CausalSpritesError as error:  # data the evaluation cannot score yet
            notes["evaluation"] = str(error)
            scores = {}
    measured = soundness if soundness is not None else soundness_metrics(model, data, seed)
    names = model.schema.names
    scalars, factors = metric_tables(scores, names)
    warning = readout_warning(scores["readout"]) if "readout" in scores else None
    if warning is not None:
        notes["readout"] = f"Reading factors off the pixels: {warning}."
    sound = None
    if isinstance(measured, str):
        notes["soundness"] = measured
    else:
        sound_scalars, sound_factors = metric_tables(measured, names)
        sound = {"scalars": sound_scalars, "factors": sound_factors}
    discoveries = _discoveries(model, data, seed)
    elapsed = time.perf_counter() - start
    env = Environment(loader=PackageLoader("causal_sprites", "templates"), autoescape=True)
    name = model.run_dir.name if model.run_dir is not None else "model"
    dsprites = isinstance(data, DSprites)
    if not dsprites:
        notes["fidelity"] = (
            "the generator's fidelity to real frames is measured for dSprites only (bench/data.py)"
        )
        notes["baselines"] = "the training benchmarks (bench/train.py) are dSprites'"
    html = env.get_template("report.html.j2").render(
        run_name=name,
        written=datetime.now().strftime("%Y-%m-%d %H:%M"),
        seconds=elapsed,
        sections=SECTIONS,
        data_summary=data_summary(data),
        figures=figures,
        notes=notes,
        fidelity=fidelity_table(bench) if dsprites else None,
        run_table=run_table(model, records),
        evaluation={"scalars": scalars, "factors": factors},
        baselines=baseline_tables(bench) if dsprites else [],
        soundness_kind=soundness_kind(data),
        soundness=sound,
        discoveries=discoveries,
        environment=environment_table(model, records, elapsed),
    )
    write_text_atomic(out, html)
    return out
