"""Frozen run configuration (model, training, run) <-> JSON; every default lives here only.

Follows nanoGPT's habit of a config dataclass stored beside the weights, so a run is rebuilt from
`config.json` alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from causal_sprites.data.factors import SCHEMA as DSPRITES_SCHEMA
from causal_sprites.data.schema import Schema
from causal_sprites.errors import CausalSpritesError

#: Bumped when config.json changes incompatibly; a run from a newer format is refused.
#: Format 2 added `model.scale_windows`, format 3 `train.pixel_sample`; runs of an earlier
#: format used one window for every scale and every pixel in the loss.
CONFIG_VERSION = 3


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the conditional VAE; `decoder` picks the image network: "pose" and "mlp"
    draw dSprites (binary 64x64), "conv" any images (`model/convnets.py`, widths from
    `conv_channels` and `encoder_hidden`)."""

    decoder: Literal["pose", "mlp", "conv"] = "pose"
    z_dim: int = 4
    decoder_hidden: int = 32
    decoder_layers: int = 3
    num_frequencies: int = 6
    window: int = 32
    scale_windows: bool = True
    encoder_channels: int = 16
    encoder_hidden: int = 256
    mlp_hidden: int = 1000
    conv_channels: int = 32
    #: The conv decoder's (y, z) also scale and shift every layer's channels (FiLM,
    #: `convnets.ConvDecoder`); off in runs from before it existed.
    decoder_film: bool = False
    #: Its transposed convolutions also read their pixels' coordinates (CoordConv,
    #: `convnets.ConvDecoder`); off in runs from before it existed.
    decoder_coords: bool = False
    #: Factors whose mechanism is a network of their parents (its logits) rather than a table of
    #: counts per parent row: chosen at training time where the rows outnumber what the data
    #: supports (`scm.graph.needs_network`).
    network_mechanisms: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of `causal-sprites train`."""

    batch_size: int = 256
    lr: float = 2e-3
    #: The decoder's learning rate (None: `lr`); the schedule scales both alike.
    decoder_lr: float | None = None
    #: "cosine" anneals the learning rate to 2 % over the budget (steps, epochs or minutes);
    #: "decay" keeps it constant, then anneals it so over the budget's last fifth.
    lr_schedule: Literal["constant", "cosine", "decay"] = "constant"
    #: An unbiased subsampled reconstruction term: the sprite's edge and a sample of the rest.
    pixel_sample: bool = True
    #: "anneal" weights the KL term 8 falling to 1 over the budget's first half (the decoder
    #: learns to read the factors before z can stand in for them) and takes the 8-bit images'
    #: beta-NLL weighting to the plain likelihood over its last fifth, so training ends on the
    #: ELBO, and charges the small-change term from 0.3 of the budget until that last fifth
    #: (`optim.objective_weights`); "none" trains the model's own objective throughout.
    objective_schedule: Literal["none", "anneal"] = "none"
    classifier_weight: float = 1.0
    #: The weight of a term pulling q(z | x, y)'s mean towards independence of the factors
    #: (`penalties.hsic`); 0: none.
    independence_weight: float = 0.0
    #: The weight of a term charging the decoder for changing its mean by less than a few grey
    #: levels when one factor is redrawn at the same z (`penalties.small_change_cost`): a
    #: factor's change shows by a lot where it shows and leaves the rest as it was. 8-bit
    #: images only; 0: none.
    change_weight: float = 0.0
    #: Clip a step's gradient norm at this many times the median of the last 100 steps' norms
    #: (`optim.GradientGuard`); None or 0: no clipping.
    grad_clip: float | None = None
    seed: int = 0
    split: Literal["random", "heldout"] = "random"
    test_fraction: float = 0.05
    num_eval_images: int = 2048
    eval_every: int = 500
    checkpoint_every: int = 500
    checkpoint_minutes: float = 3.0
    bf16: bool = True
    max_steps: int | None = None
    max_epochs: float | None = None
    max_minutes: float | None = None
    subset: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild a run: model, training, data, its factor schema (the JSON
    form of `data.schema.Schema`; None, as in runs before schemas existed, means dSprites') and
    the factor graph."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: str | None = None
    graph: tuple[tuple[str, str], ...] = ()
    version: int = CONFIG_VERSION
    libraries: dict[str, str] = field(default_factory=dict)
    schema: dict[str, Any] | None = None

    @property
    def factor_schema(self) -> Schema:
        """The schema of the data the run was trained on."""
        return DSPRITES_SCHEMA if self.schema is None else Schema.from_json(self.schema)

    def to_json(self) -> str:
        """The config as indented JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse config.json text; unknown keys or a newer format are refused; nothing imported."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise CausalSpritesError(f"config.json is not valid JSON: {error.msg}") from None
        if not isinstance(raw, dict):
            raise CausalSpritesError("config.json must hold a JSON object")
        version = raw.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise CausalSpritesError(
                f"config.json has format version {version!r}, newer than this causal-sprites "
                f"understands ({CONFIG_VERSION}); upgrade the package"
            )
        unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CausalSpritesError(f"config.json: unknown keys {unknown}")
        data = raw.get("data")
        if data is not None and not (
            isinstance(data, str) and data.endswith((".npz", ".hdf5", ".h5"))
        ):
            raise CausalSpritesError("config.json: data must name a .npz or .hdf5 file")
        model, train = raw.get("model", {}), raw.get("train", {})
        if version < 2 and isinstance(model, dict):
            model = {"scale_windows": False, **model}
        if version < 3 and isinstance(train, dict):
            train = {"pixel_sample": False, **train}
        try:
            return cls(
                model=_build(ModelConfig, model),
                train=_build(TrainConfig, train),
                data=data,
                graph=tuple((str(a), str(b)) for a, b in raw.get("graph", ())),
                version=CONFIG_VERSION,
                libraries=dict(raw.get("libraries", {})),
                schema=_schema(raw.get("schema")),
            )
        except (TypeError, ValueError) as error:
            raise CausalSpritesError(f"config.json is malformed: {error}") from None


def _schema(raw: Any) -> dict[str, Any] | None:
    """A recorded schema, checked (it must parse) and kept in its JSON form; None stays None."""
    return None if raw is None else Schema.from_json(raw).to_json()


def _build(kind: type[Any], values: Any) -> Any:
    if not isinstance(values, dict):
        raise CausalSpritesError(f"config.json: {kind.__name__} must be a JSON object")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CausalSpritesError(f"config.json: unknown {kind.__name__} keys {unknown}")
    if "network_mechanisms" in values:
        values = {**values, "network_mechanisms": tuple(values["network_mechanisms"])}
    return kind(**values)


#: The decoder at 4x the encoder's rate, constant, then annealed over the last fifth: 5x lower
#: test NELBO in 10 minutes than one rate of 2e-3, and a better classifier (bench/recipe.py).
POSE_TRAIN: Final = TrainConfig(lr=4e-3, decoder_lr=1.6e-2, lr_schedule="decay")

#: Named starting points of `train --preset`; command-line flags override their fields.
PRESETS: dict[str, RunConfig] = {
    "default": RunConfig(train=POSE_TRAIN),
    # dSprites' pose decoder on variants with continuous factors: batch 64, since the general
    # encoder's two conv trunks make a step of 256 dear; in 4 minutes on the continuous chain
    # 2,160 steps of 64 read the factors better than 607 of 256, and found its graph from the
    # pixels (SHD 0 against 2; bench/continuous_chain.py, BENCHMARKS.md).
    "continuous-sprites": RunConfig(train=replace(POSE_TRAIN, batch_size=64)),
    # The baseline: MLP encoder/decoder (1000 units, z 50), Adam 1e-3, fp32, no classifier.
    "baseline": RunConfig(
        model=ModelConfig(decoder="mlp", z_dim=50),
        train=TrainConfig(lr=1e-3, classifier_weight=0.0, bf16=False),
    ),
    # Any images (not dSprites): the convolutional encoder and decoder, the likelihood that fits
    # the pixels (`model/pixels.py`), a larger z for the unlabelled nuisances; FiLM and the
    # annealed objective so that the decoder draws an object's colour from its factors, not from
    # z, and training ends on the ELBO (bench/colour_fix.py); z held independent of the factors
    # (HSIC, `penalties.hsic`): without it z abducted from one image did not carry over to other
    # factors, and counterfactuals on the pendulum were 2.2-3.2x the reconstruction's error
    # (bench/pendulum.py; BENCHMARKS.md).
    "images": RunConfig(
        model=ModelConfig(decoder="conv", z_dim=8, decoder_film=True, decoder_coords=True),
        train=TrainConfig(
            lr=2e-3,
            lr_schedule="decay",
            batch_size=64,
            pixel_sample=False,
            objective_schedule="anneal",
            independence_weight=1e4,
            grad_clip=5.0,
        ),
    ),
    # Seconds-long runs for tests and trying things.
    "tiny": RunConfig(
        model=ModelConfig(
            decoder_hidden=16, num_frequencies=3, encoder_channels=8, encoder_hidden=64
        ),
        train=TrainConfig(batch_size=64, eval_every=100, num_eval_images=256),
    ),
}


def parse_graph(text: str) -> tuple[tuple[str, str], ...]:
    """`"shape->scale, shape->posX"` -> (("shape", "scale"), ("shape", "posX")); empty is ()."""
    edges = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parent, arrow, child = item.partition("->")
        if not arrow or not parent.strip() or not child.strip():
            raise CausalSpritesError(f"bad edge {item!r} in --graph: expected parent->child")
        edges.append((parent.strip(), child.strip()))
    return tuple(edges)
