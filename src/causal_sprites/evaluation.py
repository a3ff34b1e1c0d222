"""Evaluation of a run: test NELBO and reconstructions, factors read off pixels, counterfactual
soundness against the truth (dSprites' own images, or a causal variant's recorded noise and true
tables), and conditional and interventional distributions. Built from the pure metrics of
`metrics.py`; `score_*` return the typed results of `scores.py`, `evaluate*` the same as JSON
dicts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, ParamSpec

import numpy as np
import torch

from causal_sprites.batches import split_rows, training_images, training_labels
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS, SIZES, normalize_assignments
from causal_sprites.data.render import render
from causal_sprites.data.variants import abduct_noise, distribution, true_counterfactual
from causal_sprites.errors import CausalSpritesError
from causal_sprites.metrics import (
    accuracy,
    composition,
    counterfactual_tv,
    effectiveness,
    empirical_conditional,
    exact_readout,
    iou,
    label_distribution,
    mean_abs_error,
    pixel_error,
    preservation,
    preserved_mask,
    probe_leakage,
    psnr,
    readout_accuracy,
    reversibility,
    sampling_floor,
    summarize,
    total_variation,
)
from causal_sprites.model.pixels import bits_per_dim
from causal_sprites.scm.graph import FactorGraph
from causal_sprites.scm.inputs import as_images
from causal_sprites.scores import (
    CounterfactualScores,
    DistributionEntry,
    DistributionScores,
    FactorCounterfactualScores,
    ImageRunScores,
    QueryScores,
    Readout,
    RunScores,
    Scores,
    score_image_counterfactuals,
)
from causal_sprites.train import evaluate_nelbo

Params = ParamSpec("Params")


def held_out_sample(
    test_rows: np.ndarray, num_images: int, num_subset: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random `num_images` of the test rows, sorted (for reading), and a mask (bool) of a
    random `num_subset` of those: not the first ones, since sorted rows run shape by shape and
    the first eighth of them are all small squares."""
    drawn = np.random.default_rng(seed).permutation(test_rows)[:num_images]
    rows = np.sort(drawn)
    return rows, np.isin(rows, drawn[:num_subset])


def score_run(
    run: Any, data: Any, num_images: int = 4096, seed: int = 0, num_posterior_images: int = 512
) -> RunScores | ImageRunScores:
    """Test-set metrics of a run: NELBO (recon, KL), classifier accuracy per factor, the
    reconstruction's error and z-leakage, on up to `num_images` held-out images; on a random
    `num_posterior_images` of them, factors read off the pixels by the classifier's argmax and by
    the posterior's mode (`readout`). On dSprites `RunScores` (reconstruction IoU and pixel
    error; `readout_accuracy`), on any other data `ImageRunScores` (bits per dimension, MAE and
    PSNR; `exact_readout`)."""
    model, config, schema = run.model, run.config, run.schema
    dsprites = isinstance(data, DSprites)
    _, test_rows = split_rows(data, config)
    rows, chosen = held_out_sample(test_rows, num_images, num_posterior_images, seed)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        images_of = training_images(data, device)
        nelbo = evaluate_nelbo(model, images_of, training_labels(data, device), rows)
        images, classes = data.images(rows), np.asarray(data.factors(rows), np.int64)
        recon, codes = run.reconstruct_with_codes(images, classes)
        leakage = probe_leakage(codes, classes, seed=seed, sizes=schema.size_of)
        with torch.no_grad():
            logits = model.classify(as_images(images[chosen], schema).to(device))
        argmax = torch.stack([lg.argmax(-1) for lg in logits], -1).cpu().numpy()
        posterior = run.infer(images[chosen], top=1)
        truth = classes[chosen]
        readout = Readout(
            num_images=len(argmax),
            classifier=readout_accuracy(argmax, truth, images[chosen])
            if dsprites
            else exact_readout(argmax, truth, schema.names),
            posterior=readout_accuracy(posterior.mode, truth, images[chosen])
            if dsprites
            else exact_readout(posterior.mode, truth, schema.names),
            num_stopped_on_budget=int((~posterior.complete).sum()),
            weak_readout=run.weak_readout,
        )
        if dsprites:
            return RunScores(
                **nelbo,
                num_test_images=len(rows),
                recon_iou=summarize(iou(recon, images)),
                recon_pixel_error=summarize(pixel_error(recon, images)),
                z_leakage=leakage,
                readout=readout,
            )
        scale = 255 if schema.binary else 1  # errors on the 0-255 scale
        return ImageRunScores(
            **nelbo,
            test_bits_per_dim=bits_per_dim(nelbo["test_nelbo"], int(np.prod(schema.image_shape))),
            num_test_images=len(rows),
            recon_mae=summarize(mean_abs_error(recon * scale, images * scale)),
            recon_psnr=summarize(psnr(recon * scale, images * scale)),
            recon_iou=summarize(iou(recon, images)) if schema.binary else None,
            z_leakage=leakage,
            readout=readout,
        )


def _true_counterfactual(
    data: Any,
    variant: Any,
    rows: np.ndarray,
    factual: np.ndarray,
    do: Mapping[str, np.ndarray],
    abducted: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """True counterfactual classes (B, 5) and images (B, 64, 64) of data rows under do({name:
    values (B,)}): on a variant from its recorded noise, on dSprites the image at the same other
    factors (drawn by the generator, which is the default data). With `abducted`, a variant's noise
    is instead drawn from its posterior given the classes: a perfect model's answer."""
    ((name, values),) = do.items()
    if variant is None:
        classes = factual.copy()
        classes[:, FACTORS.index(name)] = values
        return classes, render(classes)
    spec, recorded = variant
    noise = abduct_noise(spec, factual) if abducted else {k: v[rows] for k, v in recorded.items()}
    classes = np.empty_like(factual)
    images = np.empty((len(rows), 64, 64), np.uint8)
    for value in np.unique(values):
        chosen = values == value
        row_noise = {k: v[chosen] for k, v in noise.items()}
        classes[chosen], images[chosen] = true_counterfactual(
            spec, row_noise, factual[chosen], {name: int(value)}
        )
    return classes, images


def _ceiling_scores(
    data: Any,
    variant: Any,
    rows: np.ndarray,
    factual: tuple[np.ndarray, np.ndarray],
    do: Mapping[str, np.ndarray],
    truth: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    """What a perfect model (the truth's own tables, exact abduction from the factual classes)
    scores on these queries, whose factual and true (classes, images) are given: the ceiling that
    the observation allows. On dSprites, and for a factor without descendants, it is 1: the
    counterfactual is identified."""
    true_classes, true_images = truth
    factual_classes, factual_images = factual
    classes, perfect = _true_counterfactual(data, variant, rows, factual_classes, do, abducted=True)
    undo = {name: factual_classes[:, FACTORS.index(name)] for name in do}
    _, back = _true_counterfactual(data, variant, rows, classes, undo, abducted=True)
    return {
        "ground_truth_iou_ceiling": summarize(iou(perfect, true_images)),
        "counterfactual_classes_correct_ceiling": accuracy(classes, true_classes),
        "reversibility_iou_ceiling": reversibility(factual_images, back),
    }


#: Composition (a null intervention returns the input) holds by construction under exact
#: abduction: reported as a check that abduction is not broken, not as a measured property.
COMPOSITION_NOTE: Final = (
    "exact by construction (exact abduction); below 1 means abduction is broken"
)


def score_counterfactuals(
    model: Any,
    data: Any,
    oracle: Any,
    variant: Any = None,
    num_images: int = 128,
    seed: int = 0,
    num_noise_samples: int = 2000,
) -> CounterfactualScores:
    """Counterfactual soundness (Monteiro et al. 2023) plus dSprites' ground truth, per
    intervened factor and overall, on held-out images each sent to a random other value.

    `variant` is (spec, recorded noise) when the data is a causal variant, else None. On a variant
    an intervention on a factor with descendants is not identified from the image: the recorded
    noise of a stochastic descendant is known only in distribution, so no model can match the
    recorded truth every time. Each score therefore comes with its `_ceiling` (what a perfect model
    with the true tables and exact abduction scores on the same queries), and the `_identified`
    summaries pool only the factors without descendants (`identified_factors`), where it is 1.
    What a perfect model does get right there is the distribution of the counterfactual factors:
    `counterfactual_tv` compares the model's (its tables, `num_noise_samples` draws of the
    abducted noise, the true factual classes) with the truth's, beside `counterfactual_tv_floor`,
    the true tables' own TV at the same budget. Preservation is judged against the true graph on
    a variant (the model's own graph only on plain dSprites, where it is empty by construction
    unless the user gave one): `preservation_graph` says which.
    """
    _, test_rows = split_rows(data, model.config)
    rng = np.random.default_rng(seed)
    edges = list(variant[0].edges if variant is not None else model.config.graph)
    model_graph = model.factor_graph
    true_graph = (
        variant[0].graph
        if variant is not None
        else FactorGraph.from_tables(
            {}, {n: np.ones(k) / k for n, k in zip(FACTORS, SIZES, strict=True)}
        )
    )
    per_factor: dict[str, FactorCounterfactualScores] = {}
    for name, size in zip(FACTORS, SIZES, strict=True):
        column = FACTORS.index(name)
        rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
        images, factual = data.images(rows), data.classes(rows)[:, 1:]
        values = (factual[:, column] + rng.integers(1, size, len(rows))) % size
        result = model.counterfactual_query(images, factual, do={name: values}, seed=seed)
        truth = _true_counterfactual(data, variant, rows, factual, {name: values})
        true_classes, true_images = truth
        predicted = oracle.predict(result.images)
        intervened = np.zeros_like(factual, dtype=bool)
        intervened[:, column] = True
        asked = factual.copy()
        asked[:, column] = values  # the oracle must read the value asked for, not the one claimed
        back = model.counterfactual_query(
            result.images, result.counterfactual, do={name: factual[:, column]}, seed=seed
        )
        tv, floor = counterfactual_tv(
            model_graph, true_graph, factual, {name: values}, num_noise_samples, seed
        )
        per_factor[name] = FactorCounterfactualScores(
            ground_truth_iou=summarize(iou(result.images, true_images)),
            ground_truth_pixel_error=summarize(pixel_error(result.images, true_images)),
            counterfactual_classes_correct=accuracy(result.counterfactual, true_classes),
            effectiveness=effectiveness(predicted, asked, intervened)["overall"],
            preservation=preservation(predicted, factual, preserved_mask(intervened, edges))[
                "overall"
            ],
            reversibility_iou=reversibility(images, back.images),
            identified=variant is None or not variant[0].descendants([name]),
            counterfactual_tv=tv,
            counterfactual_tv_floor=floor,
            **_ceiling_scores(data, variant, rows, (factual, images), {name: values}, truth),
        )
    rows = np.sort(rng.choice(test_rows, size=min(num_images, len(test_rows)), replace=False))
    images, factual = data.images(rows), data.classes(rows)[:, 1:]
    repeated, current = [], images
    for _ in range(10):
        current = model.counterfactual(current, factual, do={}, seed=seed)
        repeated.append(current)
    composed = composition(images, repeated)

    def pooled(key: str, identified_only: bool = False) -> float:
        chosen = [
            getattr(f, key) for f in per_factor.values() if f.identified or not identified_only
        ]
        return float(np.nanmean(chosen)) if chosen else float("nan")

    return CounterfactualScores(
        ground_truth_iou=pooled("ground_truth_iou"),
        ground_truth_iou_ceiling=pooled("ground_truth_iou_ceiling"),
        ground_truth_iou_identified=pooled("ground_truth_iou", identified_only=True),
        effectiveness=pooled("effectiveness"),
        preservation=pooled("preservation"),
        composition_iou_1=float(composed[0]),
        composition_iou_10=float(composed[9]),
        composition_note=COMPOSITION_NOTE,
        preservation_graph="true" if variant is not None else "model",
        counterfactual_tv=pooled("counterfactual_tv"),
        counterfactual_tv_floor=pooled("counterfactual_tv_floor"),
        num_noise_samples=num_noise_samples,
        reversibility_iou=pooled("reversibility_iou"),
        reversibility_iou_ceiling=pooled("reversibility_iou_ceiling"),
        reversibility_iou_identified=pooled("reversibility_iou", identified_only=True),
        identified_factors=[n for n, s in per_factor.items() if s.identified],
        per_factor=per_factor,
        num_images_per_factor=len(rows),
    )


#: The pair of factors evaluated on plain dSprites, which has no edges: an example, whose truth is
#: the data's (uniform) distribution whether one conditions or intervenes.
DSPRITES_EXAMPLE_EDGES: Final = (("shape", "scale"),)


def _query_scores(
    result: Any, predicted: np.ndarray, target: str, truth: np.ndarray, seed: int
) -> QueryScores:
    """One query's TVs against its truth: the SCM's exact marginal (`tv_scm`), the oracle's
    reading of the generated images (`tv_oracle`), the classes the SCM drew for those images
    (`tv_drawn`, sampling noise only), the oracle's reading against those classes
    (`tv_oracle_vs_drawn`, image errors only) and the sampling floor for this many images."""
    column = FACTORS.index(target)
    size = SIZES[column]
    drawn = np.asarray(result.classes)[:, column]
    read = np.asarray(predicted)[:, column]
    read_dist = label_distribution(read, size)
    return QueryScores(
        tv_scm=total_variation(result.marginals[target], truth),
        tv_oracle=total_variation(read_dist, truth),
        tv_drawn=total_variation(label_distribution(drawn, size), truth),
        tv_oracle_vs_drawn=total_variation(read_dist, label_distribution(drawn, size)),
        oracle_agreement=accuracy(read, drawn),
        sampling_floor=sampling_floor(truth, len(read), seed=seed),
        seconds=float(result.seconds),
    )


def score_distributions(
    model: Any,
    oracle: Any,
    spec: Any = None,
    data: Any = None,
    num_samples: int = 2000,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    values: Mapping[str, int | str] | None = None,
    seed: int = 0,
    return_distributions: bool = False,
) -> DistributionScores:
    """The model's P(target | do(set = v)) and P(target | set = v) against the truth, as total
    variation distance, estimated (a) from `num_samples` generated images read by the oracle and
    (b) from the SCM directly (the exact marginals of `intervene_query` / `condition_query`).

    `spec` is the truth's VariantSpec (exact distributions from `variants.distribution`); None is
    plain dSprites, whose factors are independent: the truth is then the empirical distribution of
    `data`'s labels (P(target) under do, P(target | set = v) when conditioning), or uniform
    without data. By default every edge parent -> child of the truth (on dSprites the example
    shape -> scale) is asked both ways: P(child | parent = v) (`direction` "child_given_parent",
    where do and conditioning agree when the parent has no confounder) and P(parent | child = v)
    ("parent_given_child", where they differ: intervening on an effect leaves its cause alone).
    `pairs` [(set, target)] replaces them; `values` {factor: value} picks v (default: the last
    class of the set factor).

    Returns `DistributionScores`: `entries`, one per query: `edge`, `direction`, `set`,
    `target`, `value`, then `intervention` and `condition`, each with `tv_scm`, `tv_oracle`,
    `tv_drawn`, `tv_oracle_vs_drawn`, `oracle_agreement`, `sampling_floor` and `seconds`, plus
    `truth_tv_do_vs_condition` and `scm_tv_do_vs_condition`; and the maxima over entries
    `tv_intervention`, `tv_condition` (SCM), `tv_intervention_oracle`, `tv_condition_oracle`,
    `sampling_floor` (the largest TV a perfect model would show from sampling alone), with
    `num_samples`. With `return_distributions` each entry also carries the distributions.
    """
    if num_samples < 1:
        raise CausalSpritesError(f"num_samples must be >= 1, got {num_samples}")
    edges = tuple(spec.edges) if spec is not None else DSPRITES_EXAMPLE_EDGES
    queries: list[tuple[str, str, str | None, str | None]]
    if pairs is None:
        queries = [(p, c, f"{p}->{c}", "child_given_parent") for p, c in edges]
        queries += [(c, p, f"{p}->{c}", "parent_given_child") for p, c in edges]
    else:
        queries = [(s, t, None, None) for s, t in pairs]
    chosen = normalize_assignments(values or {})
    labels = None if data is None or spec is not None else data.factors(slice(None))
    entries: list[DistributionEntry] = []
    for index, (setter, target, edge, direction) in enumerate(queries):
        if setter == target or setter not in FACTORS or target not in FACTORS:
            raise CausalSpritesError(f"bad pair {setter} -> {target}: two distinct factors needed")
        value = chosen.get(setter, SIZES[FACTORS.index(setter)] - 1)
        size = SIZES[FACTORS.index(target)]
        if spec is not None:
            truth_do = distribution(spec, target, do={setter: value})
            truth_condition = distribution(spec, target, given={setter: value})
        elif labels is not None:
            truth_do = empirical_conditional(labels, target)
            truth_condition = empirical_conditional(labels, target, {setter: value})
        else:
            truth_do = truth_condition = np.full(size, 1.0 / size)
        query_seed = seed + 2 * index
        done = model.intervene_query({setter: value}, num_samples, seed=query_seed)
        seen = model.condition_query({setter: value}, num_samples, seed=query_seed + 1)
        read_do, read_condition = oracle.predict(done.images), oracle.predict(seen.images)
        distributions = None
        if return_distributions:
            distributions = {
                "truth_do": np.asarray(truth_do).tolist(),
                "truth_condition": np.asarray(truth_condition).tolist(),
                "scm_do": np.asarray(done.marginals[target]).tolist(),
                "scm_condition": np.asarray(seen.marginals[target]).tolist(),
                "oracle_do": label_distribution(read_do[:, FACTORS.index(target)], size).tolist(),
                "oracle_condition": label_distribution(
                    read_condition[:, FACTORS.index(target)], size
                ).tolist(),
            }
        entries.append(
            DistributionEntry(
                edge=edge,
                direction=direction,
                set=setter,
                target=target,
                value=int(value),
                intervention=_query_scores(done, read_do, target, truth_do, query_seed),
                condition=_query_scores(
                    seen, read_condition, target, truth_condition, query_seed + 1
                ),
                truth_tv_do_vs_condition=total_variation(truth_do, truth_condition),
                scm_tv_do_vs_condition=total_variation(
                    done.marginals[target], seen.marginals[target]
                ),
                distributions=distributions,
            )
        )

    def largest(key: str, *modes: str) -> float:
        found = (getattr(getattr(e, mode), key) for e in entries for mode in modes)
        return max(found, default=float("nan"))

    return DistributionScores(
        tv_intervention=largest("tv_scm", "intervention"),
        tv_condition=largest("tv_scm", "condition"),
        tv_intervention_oracle=largest("tv_oracle", "intervention"),
        tv_condition_oracle=largest("tv_oracle", "condition"),
        sampling_floor=largest("sampling_floor", "intervention", "condition"),
        num_samples=num_samples,
        truth="variant" if spec is not None else ("data" if labels is not None else "uniform"),
        entries=entries,
    )


def as_json(score: Callable[Params, Scores]) -> Callable[Params, dict[str, Any]]:
    """The same evaluation returning its result's JSON (a dict), for callers that index it."""

    def evaluate_as_json(*args: Params.args, **kwargs: Params.kwargs) -> dict[str, Any]:
        return score(*args, **kwargs).to_json()

    return evaluate_as_json


evaluate = as_json(score_run)
evaluate_counterfactuals = as_json(score_counterfactuals)
evaluate_image_counterfactuals = as_json(score_image_counterfactuals)
evaluate_distributions = as_json(score_distributions)
