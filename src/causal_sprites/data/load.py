"""Any data a command's `--data` names: the project's dataset file (`data/dataset.py`: images,
factors and their schema) or dSprites' official .npz / .hdf5 (the default data when none is named).
Both answer `schema`, `images(idx)` and `factors(idx)`, so every consumer asks the data, not which
dataset it is."""

from __future__ import annotations

import zipfile
from pathlib import Path

from causal_sprites.data.dataset import Dataset, load_dataset
from causal_sprites.data.dsprites import DSprites


def load_data(path: Path | str | None = None) -> DSprites | Dataset:
    """The data at `path`: a dataset file (an .npz holding a `schema`), else a dSprites file;
    None: the default dSprites data, generated on first use."""
    if path is not None and _holds_schema(Path(path)):
        return load_dataset(path)
    return DSprites.load(path)


def _holds_schema(path: Path) -> bool:
    """Whether the file is an .npz with a `schema` member (a dataset file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "schema.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
