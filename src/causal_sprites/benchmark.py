"""`causal-sprites benchmark`: any counterfactual image model scored against the exact truth of a
data set (`benchmark_truth`) on a fixed, seeded query set (`benchmark_queries`), beside the proxies
papers use without a truth (Monteiro et al. 2023: effectiveness, preservation, composition,
reversibility), and how well each proxy ranks the models as the truth does."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from causal_sprites.benchmark_checkpoints import across_checkpoints, describe_run, spearman
from causal_sprites.benchmark_contenders import Contender
from causal_sprites.benchmark_distributions import distribution_scores
from causal_sprites.benchmark_page import markdown_table
from causal_sprites.benchmark_queries import QuerySet
from causal_sprites.benchmark_seed import subset_queries
from causal_sprites.benchmark_truth import Known
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data_oracle import DataOracleConfig, cached_oracle
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import TOLERANCE, factor_matches, iou, mean_abs_error, psnr
from causal_sprites.oracle import load_oracle
from causal_sprites.progress import progress_bar
from causal_sprites.runs import write_text_atomic

#: Queries a model answers per call.
BATCH: Final = 256
#: Queries the null intervention is applied to 10 times (composition).
COMPOSITION_QUERIES: Final = 256
#: A continuous factor read back within this fraction of its range counts as right.
CONTINUOUS_TOLERANCE: Final = 0.05
#: The proxies whose rank correlation with the error against the truth is reported.
PROXIES: Final = (
    "effectiveness",
    "preservation",
    "composition_1",
    "composition_10",
    "reversibility",
    "realism_fd",
)
ORACLE_READER: Final = "the pretrained dSprites oracle classifier (oracle.py)"


@dataclass(frozen=True)
class Prepared:
    """What every contender is scored on: the queries' factual images (N, ...) and factors
    (N, K), the true counterfactual factors and images, the factors asked for (N, K), masks
    (N, K) of the intervened factors and of those the true graph leaves alone, which queries are
    identified (N,), and the oracle that reads factors off images (`reader`)."""

    known: Known
    queries: QuerySet
    images: np.ndarray
    factors: np.ndarray
    truth_factors: np.ndarray
    truth_images: np.ndarray
    asked: np.ndarray
    intervened: np.ndarray
    preserved: np.ndarray
    identified: np.ndarray
    reader: Any
    reader_name: str


def choose_reader(known: Known, oracle_steps: int, progress: bool) -> tuple[Any, str]:
    """dSprites' oracle classifier on data with dSprites' factors and images (dSprites and its
    categorical variants); any other dataset file's own oracle (`data_oracle`: trained on the
    rows the queries never use, `oracle_steps` steps, once per file and kept)."""
    dsprites = DSprites.schema
    if (known.schema.factors, known.schema.image_shape) == (dsprites.factors, dsprites.image_shape):
        return load_oracle("pretrained"), ORACLE_READER
    config = DataOracleConfig(steps=oracle_steps)
    oracle = cached_oracle(known.data, Path(known.source), config, progress, known.truth)
    held_out = ", ".join(f"{k} {v:.3g}" for k, v in oracle.info["held_out"].items())
    moved = ", ".join(f"{k} {v:.3g}" for k, v in oracle.info["held_out_intervened"].items())
    return oracle, (
        f"an oracle trained on the dataset's other rows, half of them rendered under a random "
        f"do() ({oracle_steps} steps, data_oracle.py; held out: {held_out}; intervened on: "
        f"{moved} (accuracy of a class, mean error of a value))"
    )


def prepare(known: Known, queries: QuerySet, reader: Any, reader_name: str) -> Prepared:
    """The queries' factual and true counterfactual images and factors, and their masks."""
    schema = known.schema
    rows = queries.rows
    factors = np.asarray(known.data.factors(rows), np.float64)
    images = known.data.images(rows)
    truth_factors = np.empty_like(factors)
    truth_images = np.empty_like(images)
    intervened = np.zeros_like(factors, dtype=bool)
    preserved = np.zeros_like(factors, dtype=bool)
    identified = np.zeros(len(rows), dtype=bool)
    for chosen in queries.batches(4 * BATCH):
        do = queries.do(chosen, schema)
        truth_factors[chosen], truth_images[chosen] = known.truth.counterfactual(rows[chosen], do)
        changed = set(do) | known.descendants(list(do))
        intervened[chosen] = np.isin(np.array(schema.names), list(do))
        preserved[chosen] = ~np.isin(np.array(schema.names), list(changed))
        identified[chosen] = known.identified(list(do))
    asked = np.where(intervened, truth_factors, factors)
    return Prepared(
        known, queries, images, factors, truth_factors, truth_images, asked,
        intervened, preserved, identified, reader, reader_name,
    )  # fmt: skip


def restrict(prepared: Prepared, chosen: np.ndarray) -> Prepared:
    """The queries `chosen` (indices (M,)) of `prepared` alone, in that order: what a contender
    answering a subset of the queries (`Contender.subset`) is scored on."""
    q = prepared.queries
    values = {name: value[chosen] for name, value in q.values.items()}
    arrays = {
        f.name: getattr(prepared, f.name)[chosen]
        for f in fields(prepared)
        if isinstance(getattr(prepared, f.name), np.ndarray)
    }
    return replace(
        prepared, queries=QuerySet(q.rows[chosen], q.kinds, q.kind[chosen], values), **arrays
    )


def _checked(out: Any, expected: tuple[int, ...], binary: bool) -> np.ndarray:
    """A model's answer, refused unless uint8 images of the expected shape (0/1 if binary)."""
    if not isinstance(out, np.ndarray):
        raise CausalSpritesError(f"returned a {type(out).__name__}, not a numpy array")
    if out.dtype != np.uint8:
        nan = np.issubdtype(out.dtype, np.floating) and bool(np.isnan(out).any())
        raise CausalSpritesError(
            f"returned {out.dtype} images{' with NaN' if nan else ''}, not uint8"
        )
    if out.shape != expected:
        raise CausalSpritesError(f"returned images of shape {out.shape}, expected {expected}")
    if binary and out.size and int(out.max()) > 1:
        raise CausalSpritesError("returned pixels above 1 on binary (0/1) data")
    return out


def _agreement(
    prepared: Prepared, predicted: np.ndarray, target: np.ndarray, mask: np.ndarray
) -> float:
    """Fraction of the masked factors (N, K) the reader's `predicted` reads as `target`: a class
    within `metrics.TOLERANCE` or any class the dataset knows draws the same image (a symmetric
    sprite's look-alike turns), a continuous value within `CONTINUOUS_TOLERANCE` of its range."""
    schema = prepared.known.schema
    if schema.categorical:  # class indices, as the symmetry tables index them
        predicted, target = predicted.astype(np.int64), target.astype(np.int64)
    matches = factor_matches(predicted, target, schema, TOLERANCE, symmetric=True)
    for i, factor in enumerate(schema.factors):
        if factor.kind == "continuous":
            assert factor.low is not None and factor.high is not None
            limit = CONTINUOUS_TOLERANCE * (factor.high - factor.low)
            matches[:, i] = np.abs(predicted[:, i] - target[:, i]) <= limit
    return float((matches & mask).sum() / mask.sum()) if mask.any() else math.nan


def _effectiveness_per_factor(prepared: Prepared, read: np.ndarray) -> dict[str, float]:
    """Effectiveness per intervened factor: beside the reader's own ceiling per factor, it says
    which factor's failures are the reader's (a factor moved off the values it saw, as the
    pendulum's shadow) and which the model's."""
    factors = prepared.known.schema.factors
    return {
        factor.name: _agreement(prepared, read, prepared.asked, prepared.intervened & column)
        for factor, column in zip(factors, np.eye(len(factors), dtype=bool), strict=True)
        if prepared.intervened[:, column].any()
    }


def _errors(prepared: Prepared, images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image (N,): IoU with the reference on binary data, else MAE on the 0-255 scale."""
    if prepared.known.schema.binary:
        return iou(images, reference)
    return mean_abs_error(images, reference)


def frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D) (Heusel et
    al. 2017): |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by symmetric eigenvalues
    (no matrix square root of a non-symmetric product)."""
    mu1, mu2 = first.mean(0), second.mean(0)
    s1, s2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    values, vectors = np.linalg.eigh(s1)
    root = (vectors * np.sqrt(values.clip(0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root @ s2 @ root).clip(0)).sum()
    distance = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    return max(0.0, float(distance))  # rounding leaves identical sets a hair below 0


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def score_contender(
    contender: Contender, prepared: Prepared, progress: bool = False
) -> tuple[dict[str, Any], np.ndarray | None]:
    """One model's entry of the JSON (its answers to every query against the truth, with the
    proxies) and its answers (N, ...); a model that raises or answers malformed images is
    `failed`, with the reason, and has no answers."""
    try:
        metrics, seconds, answers = _score(contender, prepared, progress)
    except Exception as error:  # a user's model may fail in any way: report it, go on
        said = (
            str(error)
            if isinstance(error, CausalSpritesError)
            else f"{type(error).__name__}: {error}"
        )
        message = " ".join(said.split())
        return {"name": contender.name, "kind": contender.kind, "status": "failed",
                "error": message, "metrics": {}, "seconds_per_1000": None}, None  # fmt: skip
    entry = {
        "name": contender.name,
        "kind": contender.kind,
        "status": "ok",
        "error": None,
        "metrics": metrics,
        "seconds_per_1000": 1000 * seconds / len(prepared.queries),
    }
    return entry, answers


def _score(
    contender: Contender, prepared: Prepared, progress: bool
) -> tuple[dict[str, Any], float, np.ndarray]:
    """The metrics of one contender, its seconds for the queries (the main pass) and its
    answers."""
    queries, schema = prepared.queries, prepared.known.schema
    shape = prepared.images.shape[1:]
    batches = queries.batches(BATCH)
    composed = np.arange(min(len(queries), COMPOSITION_QUERIES))
    total = 2 * len(queries) + 10 * len(composed)
    answers = np.empty_like(prepared.images)
    back = np.empty_like(prepared.images)
    done = 0
    with progress_bar(f"benchmarking {contender.name}", progress) as update:

        def ask(chosen: np.ndarray, images: np.ndarray, factors: np.ndarray, do: Any) -> np.ndarray:
            nonlocal done
            out = contender.answer(queries.rows[chosen], images, factors, do)
            done += len(chosen)
            update(done, total)
            return _checked(out, (len(chosen), *shape), schema.binary)

        start = time.perf_counter()
        for chosen in batches:
            do = queries.do(chosen, schema)
            answers[chosen] = ask(chosen, prepared.images[chosen], prepared.factors[chosen], do)
        seconds = time.perf_counter() - start
        for chosen in batches:
            undo = {
                n: prepared.factors[chosen, schema.index(n)].astype(v.dtype)
                for n, v in queries.do(chosen, schema).items()
            }
            back[chosen] = ask(chosen, answers[chosen], prepared.truth_factors[chosen], undo)
        current, after = prepared.images[composed], []
        for _ in range(10):
            current = ask(composed, current, prepared.factors[composed], {})
            after.append(_errors(prepared, current, prepared.images[composed]))
    error = _errors(prepared, answers, prepared.truth_images)
    identified = prepared.identified
    key = "truth_iou" if schema.binary else "truth_mae"
    metrics: dict[str, Any] = {key: _mean(error), f"{key}_identified": _mean(error[identified])}
    if not schema.binary:
        metrics["truth_psnr"] = _mean(psnr(answers, prepared.truth_images))
    read = np.asarray(prepared.reader.predict(answers), np.float64)
    metrics["effectiveness"] = _agreement(prepared, read, prepared.asked, prepared.intervened)
    metrics["effectiveness_per_factor"] = _effectiveness_per_factor(prepared, read)
    metrics["preservation"] = _agreement(prepared, read, prepared.factors, prepared.preserved)
    metrics |= _distributions(prepared, read)
    if len(answers) > 1:
        real = prepared.reader.features(prepared.truth_images)
        metrics["realism_fd"] = frechet_distance(prepared.reader.features(answers), real)
    metrics["composition_1"] = _mean(after[0])
    metrics["composition_10"] = _mean(after[9])
    metrics["reversibility"] = _mean(_errors(prepared, back, prepared.images))
    metrics["per_do"] = {
        "+".join(kind): _mean(error[queries.kind == k]) for k, kind in enumerate(queries.kinds)
    }
    return metrics, seconds, answers


def _distributions(prepared: Prepared, read: np.ndarray) -> dict[str, Any]:
    """`distribution` per descendant factor of the unidentified queries (`benchmark_distributions`)
    and the means of its TVs and floors; {} where every query is identified."""
    per_factor = distribution_scores(
        prepared.known, prepared.queries, prepared.identified, prepared.factors,
        prepared.truth_factors, read, seed=0,
    )  # fmt: skip
    if not per_factor:
        return {}
    return {
        "distribution_tv": _mean(np.array([s["tv"] for s in per_factor.values()])),
        "distribution_tv_floor": _mean(np.array([s["floor"] for s in per_factor.values()])),
        "distribution": per_factor,
    }


def rank_correlations(models: list[dict[str, Any]], truth_key: str) -> dict[str, float | None]:
    """Spearman's rho across the models that ran between each proxy and the error against the
    truth (`truth_key`); None with fewer than 3 models or a constant column."""
    ran = [m for m in models if m["status"] == "ok"]
    out: dict[str, float | None] = {}
    for proxy in PROXIES:
        pairs = [(m["metrics"].get(proxy), m["metrics"][truth_key]) for m in ran]
        pairs = [
            (a, b) for a, b in pairs if a is not None and not math.isnan(a) and not math.isnan(b)
        ]
        a, b = (
            (np.array(side, np.float64) for side in zip(*pairs, strict=True))
            if pairs
            else (np.zeros(0), np.zeros(0))
        )
        if len(pairs) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            out[proxy] = None
            continue
        out[proxy] = spearman(a, b)
    return out


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _on_subset(model: dict[str, Any]) -> dict[str, Any]:
    """A model's entry as scored on the subset queries (`metrics_on_subset`, else its own)."""
    metrics = model.get("metrics_on_subset", model["metrics"])
    return {"status": model["status"] if metrics else "failed", "metrics": metrics}


def _correlations(result: dict[str, Any]) -> None:
    """The proxies' rank correlations of `result`'s models: over the models that answered every
    query, and, with a subset contender, over every model on the subset."""
    key, models = result["truth_metric"], result["models"]
    full = [m for m in models if not m.get("subset")]
    result["proxy_rank_correlation"] = rank_correlations(full, key)
    if "subset_queries" in result:
        result["proxy_rank_correlation_subset"] = rank_correlations(
            [_on_subset(m) for m in models], key
        )


def run_benchmark(
    known: Known,
    contenders: list[Contender],
    queries: QuerySet,
    seed: int,
    progress: bool = False,
    written: Callable[[dict[str, Any], dict[str, np.ndarray]], None] | None = None,
    oracle_steps: int = DataOracleConfig.steps,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every contender on the same queries: the benchmark's JSON, and the answers of a few
    queries per model (`shown`) for the page. `written(result, shown)` is called after each
    model, so what ran is kept if a later one takes long or the run is stopped. A contender
    that answers a subset (`Contender.subset`: `seed`) answers a seeded subset of the queries;
    every other model is then also scored on that subset (`metrics_on_subset`), the proxies'
    rank correlations leave it out (`proxy_rank_correlation_excludes`) and are given on the
    subset too (`proxy_rank_correlation_subset`)."""
    reader, reader_name = choose_reader(known, oracle_steps, progress)
    prepared = prepare(known, queries, reader, reader_name)
    schema = known.schema
    truth_key = "truth_iou" if schema.binary else "truth_mae"
    sizes = [c.subset for c in contenders if c.subset is not None]
    common = subset_queries(len(queries), min(sizes), seed) if sizes else np.arange(len(queries))
    small = restrict(prepared, common) if len(common) < len(queries) else None
    at = np.unique(np.linspace(0, len(common) - 1, min(6, len(common))).astype(int))
    picked = common[at]  # queries every model answered
    shown = {
        "queries": picked,
        "factual": prepared.images[picked],
        "truth": prepared.truth_images[picked],
    }
    result: dict[str, Any] = {
        "dataset": schema.name,
        "source": known.source,
        "num_queries": len(queries),
        "seed": seed,
        "query_hash": queries.sha256(schema),
        "queries_file": "queries.jsonl",
        "kinds": ["+".join(kind) for kind in queries.kinds],
        "identified_fraction": float(prepared.identified.mean()),
        "reader": reader_name,
        "truth_metric": truth_key,
        "composition_queries": min(len(queries), COMPOSITION_QUERIES),
        "models": [],
        "proxy_rank_correlation": {},
    }
    if small is not None:
        result["subset_queries"] = len(common)
        result["proxy_rank_correlation_excludes"] = [
            c.name for c in contenders if c.subset is not None
        ]
    read = np.asarray(reader.predict(prepared.truth_images), np.float64)
    result["reader_ceiling"] = _agreement(prepared, read, prepared.asked, prepared.intervened)
    result["reader_ceiling_per_factor"] = _effectiveness_per_factor(prepared, read)
    describe = functools.cache(describe_run)  # each run's files read once, not once per model
    for contender in contenders:
        partial = contender.subset is not None and small is not None
        asked = small if small is not None and partial else prepared
        entry, answers = score_contender(contender, asked, progress)
        if contender.subset is not None:
            entry |= {"queries_answered": len(common), "subset": partial}
        elif small is not None and entry["status"] == "ok":
            entry["metrics_on_subset"] = score_contender(contender, small, progress)[0]["metrics"]
        result["models"].append(entry)
        if answers is not None:
            shown[contender.name] = answers[at if partial else picked]
        _correlations(result)
        result["proxies_across_checkpoints"] = across_checkpoints(
            result["models"], truth_key, PROXIES, describe
        )
        if written is not None:
            written(_finite(result), shown)
    return _finite(result), shown


def write_outputs(out: Path, result: dict[str, Any], jsonl: str | None = None) -> None:
    """DIR/benchmark.json and DIR/benchmark.md (and the queries' JSONL), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    if jsonl is not None:
        write_text_atomic(out / "queries.jsonl", jsonl)
    write_text_atomic(out / "benchmark.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "benchmark.md", markdown_table(result))
