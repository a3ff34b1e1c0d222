"""The supervised conditional VAE as a Pyro model, one site per variable (Kingma et al. 2014, M2).

Generative story: each factor of the dataset's schema (on dSprites shape, scale, orientation,
posX, posY) is drawn from its conditional probability table given its parents in the factor graph
(uniform and parentless on dSprites); a style z ~ Normal(0, I); the image x ~ Bernoulli(decoder(y,
z)) pixelwise. The guide is q(z | x, y); a classifier q(y | x) trained beside it labels images that
come without factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import kl_divergence
from torch.nn import functional as F

from causal_sprites.config import ModelConfig
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model import convnets
from causal_sprites.model.factor_mechanisms import FactorMechanisms
from causal_sprites.model.nets import (
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    PoseDecoder,
    encode_factors,
    split_factor_logits,
)
from causal_sprites.model.penalties import (
    change_rows,
    hsic,
    redraw_one_factor,
    small_change_cost,
)
from causal_sprites.model.pixels import (
    Bernoulli,
    DiscretisedLogistic,
    PixelLikelihood,
    get_likelihood,
)
from causal_sprites.scm.graph import parents_from_edges
from causal_sprites.scm.graph import topological_order as factor_order
from causal_sprites.scm.mechanisms import pixel_mechanism, pixel_noise_posterior

Graph = Sequence[tuple[str, str]]
#: The reconstruction term's weighting in training on 8-bit images (beta-NLL, `model/pixels.py`);
#: the reported NELBO is always the plain bound.
TRAINING_BETA = 1.0


class PixelDistribution(dist.TorchDistribution):
    """p(x | params) of a pixel likelihood as a Pyro distribution over images (C, H, W)."""

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support: ClassVar[Any] = dist.constraints.real

    def __init__(self, likelihood: PixelLikelihood, params: Tensor) -> None:
        self.likelihood, self.params = likelihood, params
        channels = params.shape[-3] // likelihood.params_per_channel
        event = (channels, *params.shape[-2:])
        super().__init__(params.shape[:-3], torch.Size(event), validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> PixelDistribution:
        """The same likelihood over expanded parameters: Pyro's plate expands every site's
        distribution, and a wrapping ExpandedDistribution would hide the likelihood from
        `elbo_terms` (which then trained with the plain NLL instead of beta-NLL)."""
        params = self.params.expand(*batch_shape, *self.params.shape[-3:])
        return PixelDistribution(self.likelihood, params)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.likelihood.log_prob(self.params, value)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        """One image per parameter set (the model's forward draws need no more)."""
        return self.likelihood.sample(self.params).float()


def topological_order(graph: Graph, names: Sequence[str]) -> list[str]:
    """The factors `names` ordered parents first (ties in factor order); a cycle is refused."""
    parents = parents_from_edges(graph, names)
    return list(factor_order(parents, cycle="graph has a cycle among"))


class ConditionalVAE(FactorMechanisms):
    """Factors y -> image x <- style z, with q(z | x, y) and q(y | x); see the module docstring.
    The factors' names and sizes are the `schema`'s."""

    def __init__(self, config: ModelConfig, graph: Graph, schema: Schema) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        self.names = schema.names
        #: Each factor's code width: a categorical factor's classes, a continuous factor's 1.
        self.widths = tuple(f.width for f in schema.factors)
        #: What q(y | x)'s head gives per factor: a categorical factor's logits, a continuous
        #: factor's loc and raw scale of its range-scaled value.
        self.head_dims = tuple(2 if f.kind == "continuous" else f.width for f in schema.factors)
        self.graph = tuple((str(a), str(b)) for a, b in graph)
        self.parents = parents_from_edges(self.graph, self.names)
        self.order = topological_order(self.graph, self.names)
        self.encoder: ConvEncoder | MLPEncoder | convnets.ConvEncoder
        self.decoder: PoseDecoder | MLPDecoder | convnets.ConvDecoder
        #: The pixel likelihood of any-image models; None: dSprites' Bernoulli (64, 64) events.
        self.likelihood: PixelLikelihood | None = None
        if config.decoder == "conv":
            self.likelihood = get_likelihood(
                "bernoulli" if schema.binary else "discretised_logistic"
            )
            codes, hidden = sum(self.widths), config.encoder_hidden
            channels = config.conv_channels
            self.encoder = convnets.ConvEncoder(
                schema.image_shape, self.head_dims, codes, config.z_dim, channels, hidden
            )
            self.decoder = convnets.ConvDecoder(
                schema.image_shape,
                codes,
                config.z_dim,
                channels,
                self.likelihood.params_per_channel,
                hidden,
                film=config.decoder_film,
                coords=config.decoder_coords,
            )
        elif config.decoder == "pose":
            # A continuous variant of dSprites: the general encoder, whose head gives continuous
            # factors a location and a scale.
            self.encoder = (
                convnets.ConvEncoder(
                    schema.image_shape,
                    self.head_dims,
                    sum(self.widths),
                    config.z_dim,
                    config.conv_channels,
                    config.encoder_hidden,
                )
                if schema.continuous
                else ConvEncoder(
                    config.z_dim, config.encoder_channels, config.encoder_hidden, self.widths
                )
            )
            self.decoder = PoseDecoder(
                schema,
                config.z_dim,
                config.decoder_hidden,
                config.decoder_layers,
                config.num_frequencies,
                config.window,
                config.scale_windows,
            )
        elif schema.continuous:
            raise CausalSpritesError(
                f"the {config.decoder} decoder reads categorical factors only; "
                f"{schema.continuous[0]!r} is continuous: use the conv or the pose decoder"
            )
        elif config.decoder == "mlp":
            self.encoder = MLPEncoder(config.z_dim, config.mlp_hidden, self.widths)
            self.decoder = MLPDecoder(config.z_dim, config.mlp_hidden, self.widths)
        else:
            raise CausalSpritesError(
                f"unknown decoder {config.decoder!r}; use 'pose', 'mlp' or 'conv'"
            )
        self.build_mechanisms(config.network_mechanisms)

    def z_dist(self, batch_size: int) -> dist.TorchDistribution:
        """p(z) = Normal(0, I)."""
        loc = torch.zeros(batch_size, self.config.z_dim, device=self.device())
        return dist.Normal(loc, 1.0).to_event(1)

    def x_logits(self, y: Tensor, z: Tensor, keep: Tensor | None = None) -> Tensor:
        """The decoder's parameters of p(x | y, z): logits (B, 64, 64) on dSprites, else the
        likelihood's (B, P * C, H, W); `keep` see `PoseDecoder.forward`."""
        if isinstance(self.decoder, convnets.ConvDecoder):
            return self.decoder(encode_factors(y, self.schema.factors), z).float()
        if keep is not None and isinstance(self.decoder, PoseDecoder):
            return self.decoder(y, z, keep).float()
        return self.decoder(y, z).float()

    def x_dist(self, y: Tensor, z: Tensor, keep: Tensor | None = None) -> dist.TorchDistribution:
        """p(x | y, z): independent pixels, (B,) events of shape (64, 64) on dSprites (Bernoulli),
        else (C, H, W) under the model's likelihood."""
        params = self.x_logits(y, z, keep)
        if self.likelihood is not None:
            return PixelDistribution(self.likelihood, params)
        return dist.Bernoulli(logits=params, validate_args=False).to_event(2)

    # -- the image node's structural mechanism (the SCM's u_x site and its abduction) ---------
    @property
    def x_event(self) -> tuple[int, ...]:
        """The image site's event shape: (64, 64) on dSprites, else (C, H, W)."""
        height, width, channels = self.schema.image_shape
        return (height, width) if self.likelihood is None else (channels, height, width)

    @property
    def param_event(self) -> tuple[int, ...]:
        """The shape of one image's mechanism parameters: (64, 64) on dSprites, else
        (P * C, H, W)."""
        if self.likelihood is None:
            return self.x_event
        channels, height, width = self.x_event
        return (self.likelihood.params_per_channel * channels, height, width)

    def mechanism_params(self, y: Tensor, z: Tensor) -> Tensor:
        """What the image mechanism reads: the pixel probabilities (B, 64, 64) on dSprites, else
        the likelihood's parameters (B, P * C, H, W)."""
        params = self.x_logits(y, z)
        return torch.sigmoid(params) if self.likelihood is None else params

    def noise_prior(self, device: torch.device) -> dist.TorchDistribution:
        """The pixel noise u_x's prior, one coordinate per sub-pixel (an event): dSprites' is
        the Bernoulli likelihood's, Uniform(0, 1)."""
        likelihood = self.likelihood or Bernoulli()
        return likelihood.noise_prior(self.x_event, device).to_event(len(self.x_event))

    def x_mechanism(self, params: Tensor, noise: Tensor) -> Tensor:
        """The image (..., *x_event) float that mechanism parameters and pixel noise give."""
        if self.likelihood is None:
            return pixel_mechanism(params, noise).float()
        return self.likelihood.mechanism(params, noise).float()

    def abduct_pixels(self, params: Tensor, x: Tensor, uniform: Tensor) -> Tensor:
        """An exact draw of the pixel noise given the image x (B, *x_event), from Uniform(0, 1)
        draws `uniform` (S, B, *x_event): the mechanism then gives x back exactly."""
        if self.likelihood is None:
            return pixel_noise_posterior(x, params, uniform)
        return self.likelihood.abduct(params, x, uniform)

    def site_images(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in the image site's layout (B, *x_event)."""
        return x[:, 0] if self.likelihood is None else x

    def network_input(self, x: Tensor) -> Tensor:
        """Images as the model holds them ((B, 1, 64, 64) 0/1 on dSprites, else (B, C, H, W)
        pixel values) -> what the encoder reads."""
        return x if self.likelihood is None else self.likelihood.network_input(x)

    def training_pixels(self, x: Tensor, y: Tensor, uniform: Tensor | None) -> Tensor | None:
        """Pixel weights of a subsampled reconstruction term (`PoseDecoder.training_pixels`), or
        None (all pixels) without `uniform` or with the MLP decoder."""
        if uniform is None or not isinstance(self.decoder, PoseDecoder):
            return None
        return self.decoder.training_pixels(x, y, uniform)

    def z_posterior(
        self, x: Tensor, y: Tensor, features: Tensor | None = None
    ) -> dist.TorchDistribution:
        """q(z | x, y) for images (B, C, H, W) and labels (B, K); `features` skips the trunk."""
        features = self.features(x) if features is None else features
        if isinstance(self.encoder, convnets.ConvEncoder):
            loc, scale = self.encoder.z_params(features, encode_factors(y, self.schema.factors))
        else:
            loc, scale = self.encoder.z_params(features, y)
        return dist.Normal(loc.float(), scale.float()).to_event(1)

    def _head(self, x: Tensor, features: Tensor | None) -> list[Tensor]:
        """q(y | x)'s outputs per factor (`head_dims`) for images (B, C, H, W)."""
        if isinstance(self.encoder, convnets.ConvEncoder):  # q(y | x) has a trunk of its own
            return [out.float() for out in self.encoder.classify(self.network_input(x))]
        features = self.features(x) if features is None else features
        return split_factor_logits(self.encoder.classify(features).float(), self.widths)

    def classify(self, x: Tensor, features: Tensor | None = None) -> list[Tensor]:
        """q(y | x): one (B, K_i) logit tensor per categorical factor (in factor order) for
        images (B, C, H, W)."""
        outputs = self._head(x, features)
        factors = self.schema.factors
        return [out for f, out in zip(factors, outputs, strict=True) if f.kind == "categorical"]

    def regress(self, x: Tensor, features: Tensor | None = None) -> dict[str, dist.Normal]:
        """q(y | x) of each continuous factor of images (B, C, H, W): a normal over its value
        scaled to [0, 1] by its range (the readout's proposal)."""
        outputs = self._head(x, features)
        return {
            f.name: _scaled_normal(out)
            for f, out in zip(self.schema.factors, outputs, strict=True)
            if f.kind == "continuous"
        }

    def features(self, x: Tensor) -> Tensor:
        """The encoder's features (B, hidden) of images (B, C, H, W), shared by q(y | x) and
        q(z | x, y)."""
        return self.encoder.features(self.network_input(x))

    # -- Pyro model and guide --------------------------------------------------------------
    def model(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        batch_size: int = 1,
        features: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> Tensor:
        """The generative story; returns images (B, 64, 64). Observed where x, y are given.

        `features` belongs to the guide (Pyro hands model and guide the same arguments); `keep`
        (B, 64, 64) bool restricts the decoder to the pixels a subsampled training loss reads.
        """
        if x is not None:
            batch_size = x.shape[0]
        elif y is not None:
            batch_size = y.shape[0]
        with pyro.plate("data", batch_size):
            factors: dict[str, Tensor] = {}
            for name in self.order:
                obs = None if y is None else y[:, self.names.index(name)]
                factors[name] = pyro.sample(name, self.factor_dist(name, factors), obs=obs)
            labels = self.stack(factors)
            z = pyro.sample("z", self.z_dist(batch_size))
            obs_x = x if x is None or self.likelihood else x.reshape(batch_size, 64, 64)
            image: Tensor = pyro.sample("x", self.x_dist(labels, z, keep), obs=obs_x)
        return image

    def guide(
        self, x: Tensor, y: Tensor, batch_size: int = 1, features: Tensor | None = None
    ) -> None:
        """q(z | x, y); the factors are observed, so the guide only proposes z."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.z_posterior(x, y, features))

    # -- losses ------------------------------------------------------------------------------
    def loss(
        self,
        x: Tensor,
        y: Tensor,
        classifier_weight: float,
        noise: Tensor | None = None,
        uniform: Tensor | None = None,
        kl_weight: float = 1.0,
        beta: float = TRAINING_BETA,
        independence_weight: float = 0.0,
        change_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """Training objective: mean NELBO of x | y plus the weighted classifier cross-entropy.

        Returns the scalar `loss` and its batch-mean parts `recon`, `kl`, `classifier`.
        `noise` (B, z_dim), when given, is the standard normal draw behind z's reparameterised
        sample, so training randomness can be a pure function of the step; `uniform` (B, W, W)
        (W the largest window), when given, draws the pixels of an unbiased subsampled
        reconstruction term. `kl_weight` and `beta` (8-bit images' beta-NLL weighting) are the
        training schedule's (`optim.objective_weights`); 1 and 0 give the plain NELBO.
        `independence_weight` and `change_weight` add `penalties.hsic` of q(z | x, y)'s mean and
        `penalties.small_change_cost` at it on `penalties.change_rows` of the batch (parts
        `dependence` and `small_change`).
        """
        features = self.features(x)
        weights = self.training_pixels(x, y, uniform)
        recon, kl = self.elbo_terms(x, y, features, noise, weights, beta)
        classifier = self.classifier_loss(x, y, features)
        nelbo = (kl_weight * kl - recon).mean()
        parts = {
            "loss": nelbo + classifier_weight * classifier.mean(),
            "recon": -recon.mean(),
            "kl": kl.mean(),
            "classifier": classifier.mean(),
        }
        if independence_weight or change_weight:
            z_loc = cast(dist.Independent, self.z_posterior(x, y, features)).base_dist.loc
        if independence_weight:
            parts["dependence"] = hsic(z_loc, encode_factors(y, self.schema.factors))
            parts["loss"] = parts["loss"] + independence_weight * parts["dependence"]
        if change_weight:
            if not isinstance(self.likelihood, DiscretisedLogistic):
                raise CausalSpritesError("change_weight is for 8-bit images")
            rows = change_rows(len(y))
            means = [
                self.likelihood.split_params(self.x_logits(labels, z_loc[:rows].detach()))[0]
                for labels in (y[:rows], redraw_one_factor(y[:rows], self.schema.factors))
            ]
            parts["small_change"] = small_change_cost(*means).mean()
            parts["loss"] = parts["loss"] + change_weight * parts["small_change"]
        return parts

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The training loss (what DistributedDataParallel calls): `loss` with its arguments."""
        return self.loss(*args, **kwargs)

    def elbo_terms(
        self,
        x: Tensor,
        y: Tensor,
        features: Tensor | None = None,
        noise: Tensor | None = None,
        pixel_weights: Tensor | None = None,
        beta: float = TRAINING_BETA,
    ) -> tuple[Tensor, Tensor]:
        """Per-image reconstruction log p(x | y, z) with z ~ q and analytic KL(q(z|x,y) || p(z)).

        Built from a guide trace replayed through the model, so it is the model's own ELBO of
        log p(x | y) (the label term log p(y) is left out). Both (B,). With `noise`, the guide's
        z is replayed as loc + scale * noise (still reparameterised, still unobserved). With
        `pixel_weights` (B, 64, 64), the reconstruction is their weighted sum of pixel
        log-likelihoods (unbiased, see `training_pixels`), the decoder run on weighted pixels.
        """
        guide = self.guide
        if noise is not None:
            posterior = cast(dist.Independent, self.z_posterior(x, y, features)).base_dist
            z = posterior.loc + posterior.scale * noise
            fixed = poutine.Trace()
            fixed.add_node("z", type="sample", value=z, is_observed=False, infer={})
            guide = poutine.replay(self.guide, trace=fixed)
        guide_trace = poutine.trace(guide).get_trace(x, y, features=features)
        replayed = poutine.replay(self.model, trace=guide_trace)
        keep = None if pixel_weights is None else pixel_weights > 0
        model_trace = poutine.trace(replayed).get_trace(x, y, keep=keep)
        x_site, z_model = model_trace.nodes["x"], model_trace.nodes["z"]
        z_guide = guide_trace.nodes["z"]
        x_fn, x_value = cast(dist.Independent, x_site["fn"]), cast(Tensor, x_site["value"])
        if isinstance(x_fn, PixelDistribution) and self.training:
            recon = x_fn.likelihood.training_log_prob(x_fn.params, x_value, beta)
        elif pixel_weights is None:
            recon = x_fn.log_prob(x_value)
        else:
            recon = (x_fn.base_dist.log_prob(x_value) * pixel_weights).sum((-2, -1))
        kl = kl_divergence(
            cast(dist.TorchDistribution, z_guide["fn"]), cast(dist.TorchDistribution, z_model["fn"])
        )
        return recon, kl

    def classifier_loss(self, x: Tensor, y: Tensor, features: Tensor | None = None) -> Tensor:
        """Per-image -log q(y | x) summed over the factors, (B,): cross-entropy of the
        categorical ones, the normal's negative log density of the continuous ones (scaled)."""
        total = torch.zeros(x.shape[0], device=x.device)
        scaled = encode_factors(y, self.schema.factors)
        offsets = torch.tensor((0, *self.widths)).cumsum(0).tolist()
        outputs = self._head(x, features)
        for i, (factor, out) in enumerate(zip(self.schema.factors, outputs, strict=True)):
            if factor.kind == "continuous":
                total = total - _scaled_normal(out).log_prob(scaled[:, offsets[i]])
            else:
                total = total + F.cross_entropy(out, y[:, i].long(), reduction="none")
        return total


def _scaled_normal(out: Tensor) -> dist.Normal:
    """A normal over a range-scaled value from q(y | x)'s two outputs (B, 2): loc, raw scale."""
    loc, raw_scale = out.unbind(-1)
    return dist.Normal(loc, F.softplus(raw_scale) + 1e-3)
