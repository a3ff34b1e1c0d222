"""causal-sprites: a conditional VAE of labelled images (dSprites by default) inside a structural
causal model (Pyro)."""

from importlib import metadata

import causal_sprites.openmp  # noqa: F401  (first: it must run before torch loads)
from causal_sprites.data.dataset import Dataset, load_dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.load import load_data
from causal_sprites.errors import CausalSpritesError
from causal_sprites.scm.queries import CausalModel, load_run

__version__ = metadata.version("causal-sprites")
__all__ = [
    "CausalModel",
    "CausalSpritesError",
    "DSprites",
    "Dataset",
    "__version__",
    "load_data",
    "load_dataset",
    "load_run",
]
