"""The conditional VAE: shapes, gradients, the ELBO against Pyro and by hand, CPTs, round trips."""

import json
import math
from dataclasses import replace

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.nn import functional as F

from causal_sprites.config import ModelConfig, RunConfig
from causal_sprites.data.factors import FACTORS, SCHEMA
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.joint import log_prior
from causal_sprites.model.nets import PoseDecoder, edge_pixels
from causal_sprites.model.vae import ConditionalVAE, topological_order
from causal_sprites.runs import load_model, save_model
from causal_sprites.scm.graph import FactorGraph

SMALL = ModelConfig(decoder_hidden=16, num_frequencies=2, encoder_channels=4, encoder_hidden=16)


def random_batch(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.stack(
        [torch.randint(0, k, (batch,), generator=generator) for k in (3, 6, 40, 32, 32)], -1
    )
    x = (torch.rand(batch, 1, 64, 64, generator=generator) < 0.2).float()
    return x, y


@pytest.mark.parametrize("decoder", ["pose", "mlp"])
def test_shapes_and_gradients_reach_every_parameter(decoder: str) -> None:
    config = ModelConfig(decoder=decoder, mlp_hidden=32) if decoder == "mlp" else SMALL  # type: ignore[arg-type]
    model = ConditionalVAE(config, (), SCHEMA)
    x, y = random_batch()
    assert model.x_logits(y, torch.zeros(4, config.z_dim)).shape == (4, 64, 64)
    assert [t.shape[-1] for t in model.classify(x)] == [3, 6, 40, 32, 32]
    parts = model.loss(x, y, classifier_weight=1.0)
    parts["loss"].backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_elbo_matches_pyro_and_a_hand_computation() -> None:
    model = ConditionalVAE(SMALL, (), SCHEMA)
    x, y = random_batch()
    torch.manual_seed(1)
    recon, kl = model.elbo_terms(x, y)
    torch.manual_seed(1)
    pyro_loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, y)
    log_p_y = -math.log(3 * 6 * 40 * 32 * 32)  # uniform factor tables
    expected = -(recon - kl).sum() - 4 * log_p_y
    assert pyro_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # By hand: the same z (same seed), Bernoulli log-likelihood and Gaussian KL in closed form.
    torch.manual_seed(1)
    trace = pyro.poutine.trace(model.guide).get_trace(x, y)
    z = trace.nodes["z"]["value"]
    logits = model.x_logits(y, z)
    by_hand_recon = -F.binary_cross_entropy_with_logits(logits, x[:, 0], reduction="none").sum(
        (1, 2)
    )
    loc, scale = model.encoder.z_params(model.encoder.features(x), y)
    by_hand_kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
    torch.testing.assert_close(recon, by_hand_recon, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(kl, by_hand_kl, rtol=1e-5, atol=1e-5)


def test_factor_tables_follow_the_graph_and_the_labels() -> None:
    model = ConditionalVAE(SMALL, [("shape", "scale")], SCHEMA)
    assert model.cpt("scale").shape == (3, 6)
    assert model.cpt("posX").shape == (32,)
    y = torch.zeros(1000, 5, dtype=torch.long)
    y[:500, 0], y[:500, 1] = 2, 5  # hearts are big, squares small
    model.fit_tables(y, smoothing=1.0)
    probs = model.cpt("scale").exp()
    assert probs[2, 5].item() == pytest.approx(501 / 506)
    assert probs[0, 0].item() == pytest.approx(501 / 506)
    assert probs[1].tolist() == pytest.approx([1 / 6] * 6)
    assert model.cpt("shape").exp().sum().item() == pytest.approx(1.0)
    heart = model.factor_dist("scale", {"shape": torch.tensor([2])})
    assert torch.isfinite(model.cpt("posX")).all()
    assert heart.probs[0, 5].item() == pytest.approx(501 / 506)


def test_the_model_holds_one_factor_graph_of_its_own_tables() -> None:
    model = ConditionalVAE(SMALL, [("shape", "scale"), ("scale", "posX")], SCHEMA)
    y = random_batch(400, seed=3)[1]
    model.fit_tables(y)
    graph = model.factors
    assert graph.parents["posX"] == ("scale",) and graph.parents["shape"] == ()
    assert graph.log_tables["scale"] is model.cpt("scale")  # live: training and .to() move it
    fitted = FactorGraph.fit(SCHEMA.size_of, graph.parents, y)
    assert torch.allclose(graph.exact().log_tables["posX"], fitted.log_tables["posX"], atol=1e-6)
    by_hand = sum(
        model.factor_dist(name, {n: y[:, j] for j, n in enumerate(FACTORS)}).log_prob(y[:, i])
        for i, name in enumerate(FACTORS)
    )
    assert torch.allclose(log_prior(model, y), by_hand, atol=1e-5)


def test_topological_order_and_bad_graphs() -> None:
    order = topological_order([("posX", "shape")], SCHEMA.names)
    assert order.index("posX") < order.index("shape")
    with pytest.raises(CausalSpritesError, match="cycle"):
        topological_order([("shape", "scale"), ("scale", "shape")], SCHEMA.names)
    with pytest.raises(CausalSpritesError, match="unknown factor 'size'"):
        topological_order([("shape", "size")], SCHEMA.names)


def test_generative_model_samples_images_and_labels() -> None:
    model = ConditionalVAE(SMALL, (), SCHEMA)
    trace = pyro.poutine.trace(model.model).get_trace(batch_size=3)
    assert trace.nodes["x"]["value"].shape == (3, 64, 64)
    assert set(trace.nodes["x"]["value"].unique().tolist()) <= {0.0, 1.0}
    assert trace.nodes["shape"]["value"].shape == (3,)


def test_safetensors_round_trip_rebuilds_an_identical_model(tmp_path) -> None:
    config = RunConfig(model=SMALL, graph=(("shape", "posX"),))
    model = ConditionalVAE(config.model, config.graph, SCHEMA)
    model.fit_tables(random_batch(50)[1])
    save_model(tmp_path, model, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded, loaded_config = load_model(tmp_path)
    assert loaded_config == config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    _x, y = random_batch()
    z = torch.zeros(4, SMALL.z_dim)
    assert torch.equal(model.x_logits(y, z), loaded.x_logits(y, z))


def test_given_noise_reparameterises_z_exactly() -> None:
    model = ConditionalVAE(SMALL, (), SCHEMA)
    x, y = random_batch()
    noise = torch.randn(4, SMALL.z_dim)
    recon, _ = model.elbo_terms(x, y, noise=noise)
    posterior = model.z_posterior(x, y).base_dist
    z = posterior.loc + posterior.scale * noise
    expected = -F.binary_cross_entropy_with_logits(
        model.x_logits(y, z), x[:, 0], reduction="none"
    ).sum((1, 2))
    torch.testing.assert_close(recon, expected)
    assert torch.equal(recon, model.elbo_terms(x, y, noise=noise)[0])  # no hidden randomness
    recon.sum().backward()
    assert model.encoder.z_head[0].weight.grad is not None  # gradients reach the encoder


def test_default_smoothing_keeps_a_rare_row_close_to_its_frequencies() -> None:
    model = ConditionalVAE(SMALL, [("shape", "posX")], SCHEMA)
    y = torch.zeros(1000, 5, dtype=torch.long)
    y[:10, 0], y[:10, 3] = 2, 31  # only ten hearts, all on the right edge
    model.fit_tables(y)
    probs = model.cpt("posX").exp()
    assert probs[2, 31].item() == pytest.approx(10.1 / 13.2)  # add-one would give 11/42
    assert probs[2].sum().item() == pytest.approx(1.0)
    assert (
        probs[2, 0].item() == pytest.approx(0.1 / 13.2) and torch.isfinite(model.cpt("posX")).all()
    )


def test_every_sprite_lies_inside_the_window_of_its_scale() -> None:
    """The decoder gives pixels outside the window the background logit: every dSprites sprite
    (each shape, scale and orientation, positions at the grid's ends and middle) must fit."""
    grids = np.meshgrid([0], range(3), range(6), range(40), [0, 1, 15, 16, 30, 31], [0, 16, 31])
    classes = np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)
    images = torch.from_numpy(render(classes)).bool()
    decoder = PoseDecoder(SCHEMA, 4, 8, 2, 1, window=32, scale_windows=True)
    y = torch.from_numpy(classes[:, 1:])
    inside = torch.zeros(len(y), 64 * 64, dtype=torch.bool)
    for window in decoder.windows.unique().tolist():
        chosen = (decoder.windows[y[:, 1]] == window).nonzero().squeeze(1)
        rows, cols = decoder.window_pixels(y[chosen], window)
        inside[chosen[:, None], rows * 64 + cols] = True
    outside = images.view(len(y), -1) & ~inside
    assert decoder.windows.tolist() == [18, 20, 22, 26, 28, 32]
    assert outside.sum() == 0


def test_scale_windows_change_nothing_inside_the_sprite_windows() -> None:
    """Same weights, one 32-pixel window or a window per scale: the logits agree wherever the
    smaller window reaches, and are the background logit elsewhere."""
    wide = ConditionalVAE(replace(SMALL, scale_windows=False), (), SCHEMA).decoder
    tight = ConditionalVAE(replace(SMALL, scale_windows=True), (), SCHEMA).decoder
    tight.load_state_dict(wide.state_dict())
    _, y = random_batch(32)
    z = torch.randn(32, SMALL.z_dim)
    with torch.no_grad():
        a, b = wide(y, z), tight(y, z)
    background = b == tight.background_logit
    assert torch.allclose(a[~background], b[~background])
    assert background.view(32, -1).sum(1).min() >= 64 * 64 - 32 * 32
    assert (background.view(32, -1).sum(1) > 64 * 64 - 32 * 32).any()  # a smaller window


def test_runs_written_before_format_2_keep_one_window() -> None:
    """A format-1 config.json has no `scale_windows`: it rebuilds the decoder it trained."""
    old = json.loads(RunConfig().to_json())
    old["version"] = 1
    del old["model"]["scale_windows"]
    assert RunConfig.from_json(json.dumps(old)).model.scale_windows is False
    assert RunConfig.from_json(RunConfig().to_json()).model.scale_windows is True


def test_subsampled_pixels_weigh_every_pixel_one_on_average() -> None:
    """The training loss's pixel sample: every edge pixel always, the same count per window of a
    size, and weights whose expectation is 1 for every pixel (so the loss is unbiased)."""
    grids = np.meshgrid([0], range(3), range(6), [7], [31], [5])
    classes = np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)
    x = torch.from_numpy(render(classes)).float().unsqueeze(1)
    y = torch.from_numpy(classes[:, 1:])
    decoder = PoseDecoder(SCHEMA, 4, 8, 2, 1, window=32, scale_windows=True)
    generator = torch.Generator().manual_seed(0)
    draws = [
        decoder.training_pixels(x, y, torch.rand(len(y), 32, 32, generator=generator))
        for _ in range(100)
    ]
    assert all(d is not None for d in draws)
    weights = torch.stack([d for d in draws if d is not None])
    edge = F.max_pool2d(x, 3, 1, 1) != -F.max_pool2d(-x, 3, 1, 1)
    noise = torch.rand(8, 1, 64, 64, generator=generator) < 0.5
    assert torch.equal(edge_pixels(x[:, 0] > 0.5), edge[:, 0])
    pooled = F.max_pool2d(noise.float(), 3, 1, 1) != -F.max_pool2d(-noise.float(), 3, 1, 1)
    assert torch.equal(edge_pixels(noise[:, 0]), pooled[:, 0])
    assert (weights[:, edge.squeeze(1)] == 1).all()
    windows = decoder.windows[y[:, 1]]
    inside = (weights[0] != 1).sum((1, 2))  # sampled-away or up-weighted: window pixels only
    assert (inside <= windows**2).all()
    kept = (weights[0] > 0).view(len(y), -1).sum(1)
    assert torch.equal(kept, 64 * 64 - windows**2 + 10 * windows)
    mean, spread = weights.mean(0), weights.std(0) / len(weights) ** 0.5
    assert ((mean - 1).abs() <= 6 * spread + 1e-6).all()  # Monte Carlo: within 6 standard errors
    assert (mean - 1).abs().mean() < 0.02


def test_a_subsampled_loss_estimates_the_full_reconstruction_without_bias() -> None:
    model = ConditionalVAE(SMALL, (), SCHEMA)
    grids = np.meshgrid([0], range(3), [1, 5], [3], [4, 20], [9])
    classes = np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)
    x = torch.from_numpy(render(classes)).float().unsqueeze(1)
    y = torch.from_numpy(classes[:, 1:])
    noise = torch.zeros(len(y), SMALL.z_dim)
    with torch.no_grad():
        full, _ = model.elbo_terms(x, y, noise=noise)
        estimates = []
        for seed in range(60):
            uniform = torch.rand(len(y), 32, 32, generator=torch.Generator().manual_seed(seed))
            weights = model.training_pixels(x, y, uniform)
            estimates.append(model.elbo_terms(x, y, noise=noise, pixel_weights=weights)[0])
    mean = torch.stack(estimates).mean(0)
    assert torch.allclose(mean, full, rtol=0.03)  # all pixels at weight 1 would be 17 % off
    assert not torch.allclose(estimates[0], full, rtol=1e-4)  # a single draw is an estimate
