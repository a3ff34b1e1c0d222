"""Shared fixtures: seeded RNGs, tiny official-format dSprites files, a loopback HTTP server."""

from __future__ import annotations

import os

os.environ.setdefault("GOMP_SPINCOUNT", "3000")  # before torch loads: causal_sprites/openmp.py
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs a worker per core: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pyro
import pytest
import torch

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import NUM_IMAGES, classes_to_values, index_to_classes
from causal_sprites.data.render import render
from causal_sprites.scm.queries import CausalModel, load_run

#: Rows in the tiny official-format files: the first two orientations of the first sprite.
NUM_TINY = 2048


def make_images(classes: np.ndarray) -> np.ndarray:
    """Images (B, 64, 64) of classes (B, 6), drawn by the generator."""
    return render(classes)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from seeded RNGs and an empty Pyro param store."""
    np.random.seed(0)
    torch.manual_seed(0)
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def official_arrays() -> dict[str, np.ndarray]:
    """The first NUM_TINY rows of the official set: imgs, latents_classes, latents_values."""
    classes = index_to_classes(np.arange(NUM_TINY))
    return {
        "imgs": make_images(classes),
        "latents_classes": classes,
        "latents_values": classes_to_values(classes),
    }


def _write_file(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays in the official .npz layout, or the .hdf5 twin's when `path` ends in .hdf5."""
    if path.suffix == ".hdf5":
        names = {"latents_classes": "latents/classes", "latents_values": "latents/values"}
        with h5py.File(path, "w") as file:
            for key, array in arrays.items():
                file.create_dataset(names.get(key, key), data=array, compression="gzip")
    else:
        np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def write_dsprites() -> Callable[[Path, dict[str, np.ndarray]], Path]:
    """`write_dsprites(path, arrays)`: write arrays as an official-format .npz or .hdf5."""
    return _write_file


@pytest.fixture
def official_file(tmp_path: Path, official_arrays: dict[str, np.ndarray]) -> Callable[..., Path]:
    """`official_file(name, **changes)`: a tiny official-format file; None drops a key."""

    def write(name: str = "tiny.npz", **changes: np.ndarray | None) -> Path:
        arrays = {**official_arrays, **changes}
        return _write_file(tmp_path / name, {k: v for k, v in arrays.items() if v is not None})

    return write


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An official-format .npz of 600 random dSprites rows, for runs in subprocesses."""
    rows = np.sort(np.random.default_rng(1).choice(NUM_IMAGES, 600, replace=False))
    classes = index_to_classes(rows)
    arrays = {"imgs": render(classes), "latents_classes": classes}
    arrays["latents_values"] = classes_to_values(classes)
    return _write_file(tmp_path_factory.mktemp("tiny") / "tiny.npz", arrays)


@pytest.fixture(scope="session")
def subset_classes() -> np.ndarray:
    """180 class tuples (N, 6): every shape, 2 scales, 2 orientations, 5 posX, 3 posY."""
    grids = np.meshgrid([0], [0, 1, 2], [0, 5], [0, 10], [0, 8, 16, 25, 31], [0, 16, 31])
    return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)


@pytest.fixture(scope="session")
def subset_data(subset_classes: np.ndarray) -> DSprites:
    """A tiny DSprites over a subset of the official rows (not in the official order)."""
    return DSprites.from_arrays(make_images(subset_classes), subset_classes)


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback HTTP server of `routes[path]`; paths starting /broken send half, then close."""
    routes: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path.startswith("/broken"):
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def run_path() -> str:
    """The run the app and browser tests query: the pretrained one shipped with the package."""
    return "pretrained"


@pytest.fixture(scope="session")
def model(run_path: str) -> CausalModel:
    """The pretrained run, loaded once."""
    return load_run(run_path)
