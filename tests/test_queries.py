"""The SCM and its queries: sites and mechanisms, causal truth tables against exact enumeration,
counterfactual identity, exact abduction against generic inference, ChiRho and pyro.poutine.do.

Statistical checks use fixed seeds and about 5 standard errors of tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from chirho.counterfactual.handlers import MultiWorldCounterfactual, TwinWorldCounterfactual
from chirho.indexed.ops import IndexSet, gather, indices_of
from chirho.interventional.handlers import do as chirho_do
from pyro import poutine

from causal_sprites.config import ModelConfig, RunConfig
from causal_sprites.data.factors import FACTORS, SCHEMA
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.vae import ConditionalVAE
from causal_sprites.scm.graph import restrict
from causal_sprites.scm.inputs import as_interventions
from causal_sprites.scm.mechanisms import gumbel_max
from causal_sprites.scm.queries import CausalModel, load_run

SMALL = ModelConfig(decoder_hidden=16, num_frequencies=2, encoder_channels=4, encoder_hidden=16)
GRAPH = (("shape", "scale"),)
#: p(scale | shape): squares small, ellipses anywhere, hearts big.
SCALE_GIVEN_SHAPE = torch.tensor(
    [
        [0.50, 0.30, 0.10, 0.05, 0.03, 0.02],
        [1 / 6] * 6,
        [0.02, 0.03, 0.05, 0.10, 0.30, 0.50],
    ]
)
SHAPE_PRIOR = torch.tensor([0.2, 0.3, 0.5])
CLASSES = np.array([[0, 1, 5, 10, 20], [2, 4, 17, 3, 28], [1, 2, 33, 25, 6]])


@pytest.fixture(scope="module")
def model() -> CausalModel:
    """An untrained small VAE over the graph shape -> scale with hand-set tables."""
    torch.manual_seed(0)
    vae = ConditionalVAE(SMALL, GRAPH, SCHEMA).eval()
    vae.cpt("shape").copy_(SHAPE_PRIOR.log())
    vae.cpt("scale").copy_(SCALE_GIVEN_SHAPE.log())
    return CausalModel(vae, RunConfig(model=SMALL, graph=GRAPH))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return render(CLASSES)


def test_sites_are_noise_samples_and_mechanism_deterministics(model: CausalModel) -> None:
    trace = poutine.trace(model.scm).get_trace(4, 2)
    for name in FACTORS:
        noise, site = trace.nodes[f"u_{name}"], trace.nodes[name]
        assert not noise["is_observed"] and site["infer"].get("_deterministic")
        logits = model.model.factor_dist(name, {"shape": trace.nodes["shape"]["value"]}).logits
        assert site["value"].shape == (2, 4)
        assert torch.equal(site["value"], gumbel_max(logits, noise["value"]))
    assert torch.equal(trace.nodes["z"]["value"], trace.nodes["u_z"]["value"])
    labels = torch.stack([trace.nodes[n]["value"] for n in FACTORS], -1)
    probs = model.scm.pixel_probs(labels, trace.nodes["z"]["value"])
    assert torch.equal(trace.nodes["x"]["value"], (trace.nodes["u_x"]["value"] < probs).float())


def test_enumeration_matches_bayes_and_the_mutilated_network(model: CausalModel) -> None:
    prior, table = SHAPE_PRIOR.double(), SCALE_GIVEN_SHAPE.double()
    bayes = prior * table[:, 5] / (prior * table[:, 5]).sum()
    np.testing.assert_allclose(model.posterior({"scale": 5})["shape"], bayes, rtol=1e-5)
    np.testing.assert_allclose(model.posterior({"shape": "heart"})["scale"], table[2], rtol=1e-5)
    # do(scale) cuts scale from shape: shape keeps its prior; do(shape) moves scale.
    cut = model.intervene_query({"scale": 5}, num_samples=1, seed=0)
    np.testing.assert_allclose(cut.marginals["shape"], prior, rtol=1e-5)
    np.testing.assert_allclose(cut.marginals["scale"], np.eye(6)[5], atol=1e-12)
    moved = model.intervene_query({"shape": 2}, num_samples=1, seed=0)
    np.testing.assert_allclose(moved.marginals["scale"], table[2], rtol=1e-5)
    np.testing.assert_allclose(model.posterior()["scale"], prior @ table, rtol=1e-5)
    with pytest.raises(CausalSpritesError, match="probability zero"):
        restrict(model.factor_graph.log_joint({"scale": 3}), {"scale": 5}, SCHEMA.names)


def _frequencies(values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(values, minlength=size) / len(values)


def _within(freq: np.ndarray, probs: np.ndarray, n: int) -> None:
    tolerance = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9
    assert (np.abs(freq - probs) <= tolerance).all(), (freq, probs)


def test_samples_follow_the_truth_table(model: CausalModel) -> None:
    """Conditioning on the child moves the parent; intervening on it does not."""
    n = 400
    prior, table = SHAPE_PRIOR.numpy(), SCALE_GIVEN_SHAPE.numpy()
    conditioned = model.condition_query({"scale": 5}, n, seed=1)
    assert (conditioned.classes[:, 1] == 5).all()
    assert conditioned.images.shape == (n, 64, 64) and conditioned.images.dtype == np.uint8
    _within(_frequencies(conditioned.classes[:, 0], 3), conditioned.marginals["shape"], n)
    assert conditioned.marginals["shape"][2] > prior[2] + 0.3
    intervened = model.intervene_query({"scale": 5}, n, seed=2)
    assert (intervened.classes[:, 1] == 5).all()
    _within(_frequencies(intervened.classes[:, 0], 3), prior, n)
    on_shape = model.intervene_query({"shape": "heart"}, n, seed=3)
    _within(_frequencies(on_shape.classes[:, 1], 6), table[2], n)
    # pyro.poutine.do on the same Pyro model draws the same interventional distribution.
    with torch.no_grad():
        values = poutine.do(model.scm, data={"shape": torch.tensor(2)})(n)
    _within(_frequencies(values["scale"][0].numpy(), 6), table[2], n)


def test_counterfactual_of_the_observed_value_is_the_input(
    model: CausalModel, images: np.ndarray
) -> None:
    for name in FACTORS:
        same = {name: CLASSES[:, FACTORS.index(name)]}
        out = model.counterfactual(images, CLASSES, do=same, seed=0)
        assert out.dtype == np.uint8 and np.array_equal(out, images), name
    everything = dict(zip(FACTORS, CLASSES.T, strict=True))
    spread = model.counterfactual_query(
        images, CLASSES, do=everything, num_samples=3, style="sample"
    ).images
    assert spread.shape == (3, 3, 64, 64) and (spread == images).all()
    refined = model.counterfactual_query(images, CLASSES, do=everything, refine_steps=3)
    assert np.array_equal(refined.images, images)
    generic = model.counterfactual(images, CLASSES, do=everything, method="generic", seed=0)
    assert np.array_equal(generic, images)
    median = model.counterfactual_query(images, CLASSES, do=everything, pixel_noise="median")
    assert np.array_equal(median.images, images)  # binary pixels draw unless asked
    inferred = model.infer_labels(images)
    result = model.counterfactual_query(images, None, do={"posX": inferred[:, 3]})
    assert result.inferred and np.array_equal(result.factual, inferred)
    assert np.array_equal(result.images, images)


def test_descendants_follow_their_mechanisms_with_abducted_noise(
    model: CausalModel, images: np.ndarray
) -> None:
    abduction = model.abduct(images, CLASSES, num_samples=200, seed=0)
    factual, world = model.predict(abduction, {"shape": "heart"})
    heart = model.model.factor_dist("scale", {"shape": torch.tensor(2)}).logits
    expected_scale = gumbel_max(heart, abduction.noise["u_scale"])  # (S, B)
    assert torch.equal(world["shape"], torch.full((200, 3), 2))
    assert torch.equal(world["scale"], expected_scale)
    labels = torch.as_tensor(CLASSES)
    for i, name in enumerate(FACTORS):
        assert torch.equal(factual[name], labels[:, i].expand(200, 3)), name
        if name not in ("shape", "scale"):
            assert torch.equal(world[name], factual[name]), name
    assert torch.equal(factual["x"][0], torch.as_tensor(images).float())
    # do(scale) changes no ancestor: shape stays.
    _, on_scale = model.predict(abduction, {"scale": 0})
    assert torch.equal(on_scale["shape"], factual["shape"])
    assert (on_scale["scale"] == 0).all()


def _pixel_expectation(x: torch.Tensor, p: torch.Tensor, p_cf: torch.Tensor) -> torch.Tensor:
    """P(x_cf = 1) under x = 1[u < p], u ~ U(0, 1) given x, x_cf = 1[u < p_cf]."""
    on = torch.minimum(p_cf, p) / p.clamp_min(1e-12)
    off = (p_cf - p).clamp_min(0) / (1 - p).clamp_min(1e-12)
    return torch.where(x.bool(), on, off)


def test_exact_abduction_agrees_with_generic_inference(
    model: CausalModel, images: np.ndarray
) -> None:
    n, image, classes = 240, images[1:2], CLASSES[1:2]
    results = {
        method: model.counterfactual_query(
            image, classes, {"shape": "square"}, num_samples=n, method=method, seed=4
        )
        for method in ("exact", "generic")
    }
    scales = {m: _frequencies(r.counterfactual[:, 0, 1], 6) for m, r in results.items()}
    pooled = (scales["exact"] + scales["generic"]) / 2
    assert (np.abs(scales["exact"] - scales["generic"]) <= 5 * np.sqrt(2 * pooled / n) + 1e-9).all()
    # Pixels: both match the closed form averaged over the sampled counterfactual factors.
    abduction = model.abduct(image, classes)
    x = torch.as_tensor(image[0]).float()
    for method, result in results.items():
        labels = torch.as_tensor(result.counterfactual[:, 0])
        p_cf = model.scm.pixel_probs(labels, abduction.z[0].expand(n, -1))
        expected = _pixel_expectation(x, abduction.probs[0, 0], p_cf).mean(0)
        freq = torch.as_tensor(result.images[:, 0]).float().mean(0)
        error = (freq - expected).abs()
        assert error.mean() < 0.01 and error.max() < 5 * math.sqrt(0.25 / n) + 0.02, method


def test_chirho_and_pyro_do_agree_with_the_engine(model: CausalModel, images: np.ndarray) -> None:
    abduction = model.abduct(images, CLASSES, num_samples=5, seed=0)
    actions = {"shape": torch.full((5, 3), 2), "scale": torch.full((5, 3), 1)}
    _, ours = model.predict(abduction, {"shape": "heart", "scale": 1})
    conditioned = poutine.condition(model.scm, data=abduction.noise)
    with torch.no_grad(), model.scm.reusing(abduction.labels, abduction.z, abduction.probs):
        plain = poutine.do(conditioned, data=actions)(3, 5)
        with MultiWorldCounterfactual():
            multi = chirho_do(conditioned, actions=actions)(3, 5)
            worlds = indices_of(multi["x"], event_dim=2)
            assert set(worlds) == {"shape", "scale"}  # one index per intervened site
            both = gather(multi["x"], IndexSet(shape={1}, scale={1}), event_dim=2)
        with TwinWorldCounterfactual():
            twin = chirho_do(conditioned, actions=actions)(3, 5)
            # The trap: the twin index is "__fresh_split__", so naming the site selects nothing.
            assert gather(twin["x"], IndexSet(shape={1}), event_dim=2).shape[0] == 2
    for name in FACTORS:
        assert torch.equal(plain[name].expand(5, 3), ours[name]), name
    assert torch.equal(plain["x"], ours["x"])
    assert torch.equal(both.reshape(5, 3, 64, 64), ours["x"])


def test_interventions_accept_names_indices_and_per_image_values() -> None:
    actions = as_interventions({"shape": "heart", "posX": [1, "2", 3]}, 3, SCHEMA)
    assert actions["shape"].tolist() == [2, 2, 2] and actions["posX"].tolist() == [1, 2, 3]
    with pytest.raises(CausalSpritesError, match="unknown factor"):
        as_interventions({"colour": 1}, 1, SCHEMA)
    with pytest.raises(CausalSpritesError, match="out of range"):
        as_interventions({"scale": 6}, 1, SCHEMA)
    with pytest.raises(CausalSpritesError, match="bad value 'star'"):
        as_interventions({"shape": "star"}, 1, SCHEMA)
    with pytest.raises(CausalSpritesError, match="2 values of posX for 3 images"):
        as_interventions({"posX": [1, 2]}, 3, SCHEMA)
    # Class indices in a float array (what `factors()` of mixed data gives) are classes,
    floats = as_interventions({"shape": np.array([0.0, 2.0, 1.0])}, 3, SCHEMA)
    assert floats["shape"].dtype == torch.int64 and floats["shape"].tolist() == [0, 2, 1]
    with pytest.raises(CausalSpritesError, match=r"bad value '0\.5' for shape"):  # but not 0.5
        as_interventions({"shape": np.array([0.5, 1.0])}, 2, SCHEMA)


def test_bad_queries_are_refused(model: CausalModel, images: np.ndarray) -> None:
    with pytest.raises(CausalSpritesError, match="binary"):
        model.counterfactual(images * 2, CLASSES, do={"shape": 0})
    with pytest.raises(CausalSpritesError, match=r"shape \(B, 64, 64\)"):
        model.counterfactual(np.zeros((2, 32, 32)), do={"shape": 0})
    with pytest.raises(CausalSpritesError, match="2 labels for 3 images"):
        model.counterfactual(images, CLASSES[:2], do={"shape": 0})
    with pytest.raises(CausalSpritesError, match="unknown method"):
        model.counterfactual(images, CLASSES, do={"shape": 0}, method="magic")  # type: ignore[arg-type]
    with pytest.raises(CausalSpritesError, match="generic abduction draws the pixel noise"):
        model.counterfactual_query(
            images, CLASSES, do={"shape": 0}, method="generic", pixel_noise="median"
        )
    with pytest.raises(CausalSpritesError, match=">= 1"):
        model.counterfactual(images, CLASSES, do={"shape": 0}, num_samples=0)
    with pytest.raises(CausalSpritesError, match="unknown factor"):
        model.condition({"size": 1})
    with pytest.raises(CausalSpritesError, match="out of range"):
        model.intervene({"posY": 32})


def test_seeded_queries_repeat(model: CausalModel, images: np.ndarray) -> None:
    a = model.counterfactual(images, CLASSES, do={"shape": 2}, num_samples=2, seed=7)
    b = model.counterfactual(images, CLASSES, do={"shape": 2}, num_samples=2, seed=7)
    assert np.array_equal(a, b)
    assert np.array_equal(
        model.condition({"shape": 1}, 4, seed=3), model.condition({"shape": 1}, 4, seed=3)
    )


@pytest.mark.slow
def test_pretrained_counterfactuals_match_the_true_images() -> None:
    """do(shape) on 100 random dSprites images against the image dSprites holds for it."""
    from causal_sprites.data import dsprites
    from causal_sprites.metrics import iou
    from causal_sprites.runs import PRETRAINED_DIR

    if not (PRETRAINED_DIR / "model.safetensors").is_file():
        pytest.skip(f"no pretrained run in {PRETRAINED_DIR}")
    if not dsprites.default_path().is_file():
        pytest.skip(f"the default data is not at {dsprites.default_path()}")
    model = load_run("pretrained")
    data = dsprites.DSprites.load()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(data), 100, replace=False)
    classes = data.factors(rows)
    shapes = (classes[:, 0] + rng.integers(1, 3, len(rows))) % 3
    truth_classes = classes.copy()
    truth_classes[:, 0] = shapes
    truth = data.images([data.index(**dict(zip(FACTORS, c, strict=True))) for c in truth_classes])
    result = model.counterfactual_query(data.images(rows), classes, {"shape": shapes}, seed=0)
    assert np.array_equal(result.counterfactual, truth_classes)
    assert float(iou(result.images, truth).mean()) >= 0.98
