"""Reading the factors off the pixels: the posterior p(y | x) ∝ p(y) p(x | y) of the model itself.

The classifier q(y | x) proposes, the decoder decides (Kingma et al. 2014, M2, classify by the
generative model): a coordinate search from the classifier's argmax scores single-factor changes
of the current best tuple (every class the classifier gives some weight, the neighbouring grid
values, and the orientations that draw nearly the same sprite) by log p(y) plus the ELBO of
log p(x | y) with q(z | x, y), moves to the best and repeats until nothing improves. A mode that
still explains its image badly is searched again, wider each time (the classifier's top classes
combined, two factors changed at once, every shape, scale and orientation around the position).
On 8-bit images, where the mode is not the classifier's tuple, the finalists are scored again
with q(z | x, y)'s location refined (`joint.refined_elbo`): the encoder's guess can be worse at
the true tuple than at a wrong one. Every scored tuple enters the normalised posterior; tuples
never proposed are taken as negligible.
The search is bounded (`SearchBudget`): tuples scored per image, the wider searches at all, and
seconds per call; an image whose search the budget ended while its mode still explains it badly
is marked incomplete, never passed off as a finished search.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from causal_sprites.errors import CausalSpritesError
from causal_sprites.model import refine
from causal_sprites.model.joint import elbo, log_prior, refined_elbo
from causal_sprites.model.pixels import DiscretisedLogistic
from causal_sprites.model.search import SearchSpace
from causal_sprites.model.vae import ConditionalVAE

#: A class the classifier gives at least this probability is scored, up to MAX_LIKELY classes
#: per factor (the most probable): a flat classifier would otherwise propose every class.
MIN_PROPOSAL_PROB = 0.01
MAX_LIKELY = 5
#: Rounds of the coordinate search at most.
MAX_ROUNDS = 4
#: A mode whose ELBO of log p(x | y) is below this many nats is searched again, wider: a sprite
#: the pretrained model draws right scores a few nats, a pose a step off in two factors hundreds.
ESCALATE_NATS = -30.0
#: Factor tuples per image kept when a posterior is drawn from or folded in (the rest weigh
#: nothing on a trained model).
DRAW_TOP = 8
#: Candidate tuples scored per decoder call.
SCORE_CHUNK = 1024
#: On 8-bit images, below this posterior probability the classifier's own tuple is ruled out
#: and the answer is in doubt (`FactorPosterior.classifier_agrees`); equivalent tuples share the
#: posterior, so a mode other than the classifier's is not doubt by itself. On dSprites the
#: classifier's misses are near-symmetric turns the posterior reads right (bench/readout_refine.py
#: --dsprites): the flag would only cry wolf there, so binary images always agree.
AGREE_SHARE = 0.01
#: Tuples per image (the best scored) whose ELBO is tightened by `joint.refined_elbo` before the
#: posterior is normalised, on 8-bit images (`_refine_finalists`), and tuples refined at once.
REFINE_FINALISTS, REFINE_CHUNK = 4, 256
#: Tuples scored per image at most: a full escalation scores about 2,000 (the wide search alone
#: about 1,450); the pretrained model scores at most 23 on 2,048 random images.
MAX_SCORED = 2048


@dataclass(frozen=True)
class SearchBudget:
    """How far the posterior search may go: `max_scored` tuples per image, the wider searches
    for badly explained modes at all (`escalate`; a run too weak to explain its images skips
    them), `max_seconds` per call, after which no wider search starts, and on 8-bit images
    `refine`: where the search's mode is not the classifier's tuple, score the finalists again
    with q(z | x, y)'s location refined (`_refine_finalists`)."""

    max_scored: int = MAX_SCORED
    escalate: bool = True
    max_seconds: float | None = None
    #: The ELBO below which a mode explains its image badly (`escalation_level`).
    escalate_below: float = ESCALATE_NATS
    refine: bool = True

    def __post_init__(self) -> None:
        if self.max_scored < 1:
            raise CausalSpritesError(f"max_scored must be >= 1, got {self.max_scored}")


@dataclass(frozen=True)
class FactorPosterior:
    """The posterior over factor tuples of B images, best first: `classes` (B, T, K) (int64
    classes; float where a factor is continuous, its columns holding the refined value in every
    candidate), `probabilities` (B, T) (the T most probable of all scored tuples; rows may sum
    below 1 when more were scored), `log_likelihood` (B,) the ELBO of log p(x | y) at the mode,
    `num_scored` (B,) tuples the decoder scored, `complete` (B,) bool: False where the budget
    ended the search while the mode still explained its image badly, `spread` (B, K) a
    continuous factor's posterior standard deviation in its unit (NaN for categorical ones),
    and `classifier_agrees` (B,) bool: False where, on 8-bit images, the posterior gives the
    classifier q(y | x)'s argmax tuple (its categorical factors) less than AGREE_SHARE, so that
    two readings of one model disagree and the answer is in doubt whatever its probability."""

    classes: np.ndarray
    probabilities: np.ndarray
    log_likelihood: np.ndarray
    num_scored: np.ndarray
    complete: np.ndarray
    spread: np.ndarray = None  # type: ignore[assignment]  # set in __post_init__
    classifier_agrees: np.ndarray = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        batch, _, count = self.classes.shape
        if self.spread is None:  # every factor categorical: no spread
            object.__setattr__(self, "spread", np.full((batch, count), np.nan))
        if self.classifier_agrees is None:
            object.__setattr__(self, "classifier_agrees", np.ones(batch, dtype=bool))

    @classmethod
    def concatenate(cls, parts: list[FactorPosterior]) -> FactorPosterior:
        """One posterior of the images of several, in order."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in names))

    def rows(self, index: np.ndarray | list[int]) -> FactorPosterior:
        """The posterior of some of the images, in the order given."""
        names = [field.name for field in dataclasses.fields(self)]
        return FactorPosterior(*(getattr(self, name)[index] for name in names))

    @property
    def mode(self) -> np.ndarray:
        """The most probable factor tuple (B, 5) of each image."""
        return self.classes[:, 0]

    def sample(self, num_samples: int, generator: np.random.Generator) -> np.ndarray:
        """Factor tuples (S, B, K) drawn from each image's (top-T, renormalised) posterior; a
        continuous factor's value from a normal of its spread around its mode."""
        probs = self.probabilities / self.probabilities.sum(1, keepdims=True)
        cumulative = probs.cumsum(1)
        draws = generator.random((num_samples, len(probs), 1))
        picks = (draws > cumulative[None]).sum(-1).clip(max=probs.shape[1] - 1)
        tuples = self.classes[np.arange(len(probs))[None], picks]
        continuous = ~np.isnan(self.spread[0]) if len(self.spread) else np.zeros(0, bool)
        if continuous.any():
            noise = generator.standard_normal(tuples[..., continuous].shape)
            tuples[..., continuous] += noise * self.spread[None][..., continuous]
        return tuples


def _score(
    vae: ConditionalVAE, images: Tensor, features: Tensor, rows: Tensor, tuples: Tensor
) -> tuple[Tensor, Tensor]:
    """log p(y) + ELBO and the ELBO alone (N,) of tuples (N, 5) for images[rows]."""
    joint, likelihood = [], []
    for start in range(0, len(rows), SCORE_CHUNK):
        chunk, ys = rows[start : start + SCORE_CHUNK], tuples[start : start + SCORE_CHUNK]
        bound = elbo(vae, images[chunk], features[chunk], ys)
        likelihood.append(bound)
        joint.append(log_prior(vae, ys) + bound)
    return torch.cat(joint), torch.cat(likelihood)


def _likely_classes(probs: Tensor) -> list[int]:
    """Classes (most probable first, MAX_LIKELY at most) to which the classifier gives
    MIN_PROPOSAL_PROB or more."""
    order = torch.argsort(probs, descending=True)[:MAX_LIKELY]
    return [int(k) for k in order if probs[k] >= MIN_PROPOSAL_PROB]


@torch.no_grad()
def infer_posterior(
    vae: ConditionalVAE,
    images: Tensor,
    top: int = 5,
    budget: SearchBudget = SearchBudget(),
    deadline: float | None = None,
) -> FactorPosterior:
    """The posterior over factor tuples of images (B, C, H, W) as the model holds them (see the
    module),
    searched within `budget`; no wider search starts after `deadline` (time.monotonic())."""
    space = SearchSpace.of(vae.schema)
    features = vae.features(images)
    probs = [logits.softmax(-1).cpu() for logits in vae.classify(images, features)]
    likely = [[_likely_classes(p[b]) for p in probs] for b in range(len(images))]
    starts = [tuple(int(p[b].argmax()) for p in probs) for b in range(len(images))]
    scored: list[dict[tuple[int, ...], tuple[float, float]]] = [{} for _ in images]
    rows = None
    if vae.schema.continuous:  # categorical tuples are scored at the proposed values
        values, scales = refine.propose(vae, images, features)
        rows = torch.zeros(len(images), len(vae.names), device=images.device)
        rows[:, _columns(vae, continuous=True)] = values
    search = _Search(vae, space, images, features, likely, scored, budget.max_scored, rows)
    modes = search.climb(
        {b: ({start} | space.proposals(start, likely[b])) for b, start in enumerate(starts)}
    )
    for widen in (space.joint, space.pairs, space.widest):
        stuck = [b for b, mode in modes.items() if scored[b][mode][1] < budget.escalate_below]
        if not budget.escalate or (deadline is not None and time.monotonic() > deadline):
            search.cut.update(stuck)
            break
        if stuck:
            modes.update(search.climb({b: widen(modes[b], likely[b]) for b in stuck}))
    doubted = [b for b, mode in modes.items() if mode != starts[b]]
    eight_bit = isinstance(vae.likelihood, DiscretisedLogistic)
    if budget.refine and eight_bit and rows is None and doubted:
        _refine_finalists(vae, images, features, scored, {b: starts[b] for b in doubted})
        modes = {b: _best(scored[b]) for b in modes}
    stopped = [b in search.cut and scored[b][modes[b]][1] < budget.escalate_below for b in modes]
    posterior = _normalise(scored, top, ~np.array(stopped, dtype=bool))
    agrees = np.ones(len(starts), dtype=bool)  # binary images never doubt (AGREE_SHARE)
    if eight_bit:
        shares = [_share(table, start) for table, start in zip(scored, starts, strict=True)]
        agrees = np.array(shares) >= AGREE_SHARE
    posterior = dataclasses.replace(posterior, classifier_agrees=agrees)
    if rows is None:
        return posterior
    return _with_continuous(vae, images, features, posterior, rows, scales)


def _refine_finalists(
    vae: ConditionalVAE,
    images: Tensor,
    features: Tensor,
    scored: list[dict[tuple[int, ...], tuple[float, float]]],
    starts: dict[int, tuple[int, ...]],
) -> None:
    """Score the REFINE_FINALISTS best tuples and the classifier's own (`starts`) of the images
    in `starts` again by log p(y) + `refined_elbo`, in place; their ELBO at q's mean stays the
    likelihood (what `likelihood_range` measured). On 8-bit images q(z | x, y)'s amortised
    guess can be hundreds of nats off at the true tuple and not at a wrong one: the colour
    set's small discs were read as squares (BENCHMARKS.md). Binary images (dSprites) keep the
    search's scores, so their answers do not move."""
    rows: list[int] = []
    tuples: list[tuple[int, ...]] = []
    for b, start in starts.items():
        table = scored[b]
        best = sorted(table, key=lambda t: -table[t][0])[:REFINE_FINALISTS]
        finalists = best + [start] * (start not in best)
        rows += [b] * len(finalists)
        tuples += finalists
    index = torch.tensor(rows, device=images.device)
    candidates = torch.tensor(tuples, device=images.device)
    for first in range(0, len(rows), REFINE_CHUNK):
        chunk = slice(first, first + REFINE_CHUNK)
        ys, at = candidates[chunk], index[chunk]
        joint = log_prior(vae, ys) + refined_elbo(vae, images[at], features[at], ys)
        for b, t, score in zip(rows[chunk], tuples[chunk], joint.tolist(), strict=True):
            scored[b][t] = (score, scored[b][t][1])


def _columns(vae: ConditionalVAE, continuous: bool) -> list[int]:
    """The columns of the continuous (or the categorical) factors."""
    kinds = [f.kind == "continuous" for f in vae.schema.factors]
    return [i for i, kind in enumerate(kinds) if kind == continuous]


def _with_continuous(
    vae: ConditionalVAE,
    images: Tensor,
    features: Tensor,
    posterior: FactorPosterior,
    rows: Tensor,
    scales: Tensor,
) -> FactorPosterior:
    """The categorical search's posterior completed by the continuous factors, refined at its
    mode (`model/refine.py`): every candidate holds the refined values."""
    categorical = _columns(vae, continuous=False)
    rows[:, categorical] = torch.as_tensor(
        posterior.classes[:, 0], dtype=rows.dtype, device=rows.device
    )
    index = torch.arange(len(images), device=images.device)

    def score(candidates: Tensor) -> tuple[Tensor, Tensor]:
        batch, count = candidates.shape[:2]
        flat = candidates.reshape(-1, candidates.shape[-1])
        joint, likelihood = _score(vae, images, features, index.repeat_interleave(count), flat)
        return joint.view(batch, count), likelihood.view(batch, count)

    refined, spreads, _, likelihood = refine.refine(vae, rows, scales, score)
    classes = refined[:, None].repeat(1, posterior.classes.shape[1], 1).cpu().double().numpy()
    classes[..., categorical] = posterior.classes
    spread = np.full(refined.shape, np.nan)
    spread[:, _columns(vae, continuous=True)] = spreads.cpu().numpy()
    return dataclasses.replace(
        posterior,
        classes=classes,
        log_likelihood=likelihood.cpu().numpy(),
        num_scored=posterior.num_scored + 2 * refine.GRID * len(vae.schema.continuous),
        spread=spread,
    )


@dataclass
class _Search:
    """Coordinate ascent over factor tuples, all images batched; `scored` collects every score."""

    vae: ConditionalVAE
    space: SearchSpace
    images: Tensor
    features: Tensor
    likely: list[list[list[int]]]
    scored: list[dict[tuple[int, ...], tuple[float, float]]]
    max_scored: int
    #: Each image's full factor rows (B, K) whose categorical columns a tuple fills (the
    #: continuous ones hold the proposals), or None where every factor is categorical.
    rows: Tensor | None = None
    #: Images whose search stopped on `max_scored` (or, set by the caller, on the budget).
    cut: set[int] = dataclasses.field(default_factory=set)

    def climb(self, pending: dict[int, set[tuple[int, ...]]]) -> dict[int, tuple[int, ...]]:
        """Score the pending tuples, move each image to its best, propose its single-factor
        changes, repeat until nothing improves (or MAX_ROUNDS); returns each image's best.
        An image whose next tuples would pass `max_scored` stops where it is."""
        best = {b: _best(self.scored[b]) for b in pending if self.scored[b]}
        for _ in range(MAX_ROUNDS):
            fresh = {
                b: self._within_budget(b, todo - self.scored[b].keys())
                for b, todo in pending.items()
            }
            pending = {b: todo for b, todo in fresh.items() if todo}
            if not pending:
                break
            self._score(pending)
            moved = {}
            for b in pending:
                best[b] = _best(self.scored[b])
                moved[b] = self.space.proposals(best[b], self.likely[b])
            pending = moved
        return {b: _best(self.scored[b]) for b in best}

    def _within_budget(self, b: int, todo: set[tuple[int, ...]]) -> set[tuple[int, ...]]:
        """The tuples of `todo` that image b may still score: all, or the first in sorted order
        (the same on every call) when they do not fit, and b is then marked cut."""
        room = self.max_scored - len(self.scored[b])
        if len(todo) <= room:
            return todo
        self.cut.add(b)
        return set(sorted(todo)[: max(room, 0)])

    def _score(self, pending: dict[int, set[tuple[int, ...]]]) -> None:
        rows = [b for b, todo in pending.items() for _ in todo]
        tuples = [t for todo in pending.values() for t in todo]
        device = self.images.device
        index = torch.tensor(rows, device=device)
        candidates = torch.tensor(tuples, device=device).view(len(tuples), -1)
        if self.rows is not None:
            full = self.rows[index].clone()
            full[:, _columns(self.vae, continuous=False)] = candidates.to(full.dtype)
            candidates = full
        joint, likelihood = _score(self.vae, self.images, self.features, index, candidates)
        for b, t, s, ll in zip(rows, tuples, joint.tolist(), likelihood.tolist(), strict=True):
            self.scored[b][t] = (s, ll)


def _share(table: dict[tuple[int, ...], tuple[float, float]], key: tuple[int, ...]) -> float:
    """The posterior probability of one scored tuple among an image's scored set."""
    joint = np.array([score for score, _ in table.values()])
    return float(np.exp(table[key][0] - joint.max()) / np.exp(joint - joint.max()).sum())


def _best(table: dict[tuple[int, ...], tuple[float, float]]) -> tuple[int, ...]:
    """The tuple of highest log p(y) + ELBO in an image's scored table."""
    return max(table.items(), key=lambda item: item[1][0])[0]


def _normalise(
    scored: list[dict[tuple[int, ...], tuple[float, float]]], top: int, complete: np.ndarray
) -> FactorPosterior:
    """The top-K tuples of each image's scored set with their normalised probabilities."""
    batch = len(scored)
    classes = np.zeros((batch, top, len(next(iter(scored[0])))), dtype=np.int64)
    probabilities = np.zeros((batch, top))
    log_likelihood = np.zeros(batch)
    for b, table in enumerate(scored):
        tuples = list(table)
        joint = np.array([table[t][0] for t in tuples])
        weights = np.exp(joint - joint.max())
        weights /= weights.sum()
        order = np.argsort(-weights, kind="stable")[:top]
        classes[b, : len(order)] = np.array(tuples)[order]
        classes[b, len(order) :] = classes[b, 0]
        probabilities[b, : len(order)] = weights[order]
        log_likelihood[b] = table[tuples[order[0]]][1]
    counts = np.array([len(table) for table in scored])
    return FactorPosterior(classes, probabilities, log_likelihood, counts, complete)


def run_budget(usual: dict[str, float] | None) -> SearchBudget:
    """The search budget of a run with this held-out likelihood range: no wider searches where
    the run is too weak for them (`weak_readout`: they would cost thousands of decoder passes an
    image and read little), escalation below `escalation_level`."""
    return SearchBudget(
        escalate=weak_readout(usual) is None, escalate_below=escalation_level(usual)
    )


def weak_readout(usual: dict[str, float] | None) -> str | None:
    """Why a run with this held-out likelihood range (`likelihood_range`) is too weak for a
    pixel readout: its median image is explained worse than ESCALATE_NATS at the factors the
    search reads, so widening the search would cost thousands of decoder passes an image and
    read nothing right. None for a run that explains its images (or records no range)."""
    if usual is None or usual["median"] >= escalation_level(usual):
        return None
    return (
        f"the model is too weak for a pixel readout: its held-out images' median log-likelihood "
        f"is {usual['median']:.0f} nats at the factors it reads (a model that explains its "
        f"images scores above {escalation_level(usual):.0f}), so the wider searches are skipped; "
        "train longer"
    )


def refusal(row: int, log_likelihood: float, usual: dict[str, float], data: str) -> str:
    """Why image `row` of a query gets no counterfactual: no factor tuple of the `data`'s
    explains it (its log-likelihood is below the run's threshold, `likelihood_range`)."""
    return (
        f"image {row} is unlike any {data} image: log-likelihood {log_likelihood:.0f} nats at "
        f"its best factors, below this run's threshold {usual['threshold']:.0f} (held-out "
        f"median {usual['median']:.1f}); no counterfactual"
    )


#: The out-of-distribution threshold is never above this (nats): a near-perfect model's spread
#: is so narrow that the quantile rule alone lands near -10 nats, below which a real, rightly
#: read image can still fall (the worst of 4,096 held-out images: -27 nats for the 0.18-nat
#: pretrained model); a blank, noisy or two-sprite image scores thousands of nats below.
HIGHEST_THRESHOLD = -100.0


def likelihood_range(
    log_likelihoods: np.ndarray, labelled: np.ndarray | None = None
) -> dict[str, float]:
    """The usual range (1 % and 99 % quantiles, median) of the mode's ELBO on held-out images, and
    the threshold below which an image counts as out of distribution: the 10 % quantile minus
    twenty times its distance to the median, and at most HIGHEST_THRESHOLD. Built on the 10 %
    quantile, not the 1 %, so that the few held-out images a quick search misreads do not drag
    it down. With the ELBOs at the images' true labels, their median too (`labelled_median`)."""
    low, tenth, median, high = np.quantile(log_likelihoods, [0.01, 0.1, 0.5, 0.99]).tolist()
    usual = {
        "num_images": len(log_likelihoods),
        "low": low,
        "median": median,
        "high": high,
        "threshold": min(tenth - 20.0 * (median - tenth), HIGHEST_THRESHOLD),
    }
    if labelled is not None:
        usual["labelled_median"] = float(np.median(labelled))
    return usual


def escalation_level(usual: dict[str, float] | None) -> float:
    """The ELBO below which a mode explains its image badly (and the search widens):
    ESCALATE_NATS below the held-out median at the true labels (taken as 0 nats where the run
    records none: dSprites' pixels are explained to within a few nats)."""
    return ESCALATE_NATS + (usual or {}).get("labelled_median", 0.0)
