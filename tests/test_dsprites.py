"""The official files (load, verify, download), bit packing and the DSprites store."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_sprites.data import dsprites
from causal_sprites.data.dsprites import DSprites, pack, unpack, unpack_torch
from causal_sprites.data.factors import FACTORS, NUM_IMAGES, VALUES
from causal_sprites.errors import CausalSpritesError

NUM = 2048
WriteFile = Callable[..., Path]


class Payload:
    """Unpickling this creates the file `marker` (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def pickled(marker: Path) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = Payload(marker)
    return array


# --- bit packing -------------------------------------------------------------------------------


def test_pack_unpack_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 2, (7, 64, 64), dtype=np.uint8)
    packed = pack(images)
    assert packed.shape == (7, 512) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack(packed), images)
    from_torch = unpack_torch(torch.from_numpy(packed))
    assert from_torch.dtype == torch.uint8 and from_torch.device.type == "cpu"
    np.testing.assert_array_equal(from_torch.numpy(), images)
    np.testing.assert_array_equal(unpack(packed[3]), images[3])


def test_unpack_rejects_bad_shapes() -> None:
    with pytest.raises(CausalSpritesError, match=r"\(B, 512\)"):
        unpack(np.zeros((2, 511), np.uint8))
    with pytest.raises(CausalSpritesError, match=r"\(B, 512\)"):
        unpack_torch(torch.zeros(2, 512, dtype=torch.int64))
    with pytest.raises(CausalSpritesError, match=r"\(B, 64, 64\)"):
        pack(np.zeros((2, 32, 32), np.uint8))


# --- loading and verifying ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny.npz", "tiny.hdf5"])
def test_load_and_verify_official_format(
    official_file: WriteFile, official_arrays: dict[str, np.ndarray], name: str
) -> None:
    path = official_file(name)
    data = DSprites.load(path)
    assert len(data) == NUM
    assert data.packed.shape == (NUM, 512)
    np.testing.assert_array_equal(data.images(np.arange(NUM)), official_arrays["imgs"])
    np.testing.assert_array_equal(data.classes(slice(None)), official_arrays["latents_classes"])
    np.testing.assert_array_equal(data.values([5, 6]), official_arrays["latents_values"][5:7])
    summary = dsprites.verify(path, num_images=NUM)
    assert summary["num_images"] == NUM and summary["format"] == name.split(".")[1]
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary["checksum"] == "not known"
    given = dsprites.verify(path, summary["sha256"].upper(), num_images=NUM)
    assert given["checksum"] == "matched"
    with pytest.raises(
        CausalSpritesError, match=f"wrong shape: {NUM} images, expected {NUM_IMAGES}"
    ):
        dsprites.verify(path)


def test_metadata_is_rebuilt_never_unpickled(official_file: WriteFile, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = official_file(metadata=pickled(marker))
    assert len(DSprites.load(path)) == NUM
    dsprites.verify(path, num_images=NUM)
    assert not marker.exists()
    meta = dsprites.metadata()
    assert list(meta["latents_sizes"]) == [1, 3, 6, 40, 32, 32]
    np.testing.assert_array_equal(meta["latents_possible_values"]["scale"], VALUES["scale"])


@pytest.mark.parametrize("key", ["imgs", "latents_classes"])
def test_pickled_arrays_are_refused_unexecuted(
    official_file: WriteFile, tmp_path: Path, key: str
) -> None:
    marker = tmp_path / "unpickled"
    path = official_file(**{key: pickled(marker)})
    for check in (DSprites.load, dsprites.verify):
        with pytest.raises(CausalSpritesError, match=f"{key} is a pickled object array"):
            check(path)
    assert not marker.exists()


def _swap_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.arange(NUM)
    order[[10, 11]] = [11, 10]
    return {key: array[order] for key, array in arrays.items()}


def _bad_files(arrays: dict[str, np.ndarray]) -> dict[str, tuple[dict, str]]:
    """Changes to the tiny file, with the error each must give (load and verify alike)."""
    imgs, classes = arrays["imgs"], arrays["latents_classes"]
    grey = imgs.copy()
    grey[7, 30, 30] = 255
    far = classes.copy()
    far[3, 4] = 32
    return {
        "wrong keys": ({"latents_values": None}, "wrong keys: missing latents.values"),
        "wrong shape": ({"imgs": imgs[:, :32, :32]}, r"wrong shape: imgs is \(2048, 32, 32\)"),
        "short rows": ({"latents_classes": classes[:-1]}, "wrong shape: latents_classes"),
        "wrong dtype": ({"imgs": imgs.astype(np.float32)}, "wrong dtype: imgs is float32"),
        "wrong dtype 2": (
            {"latents_classes": classes.astype(np.int32)},
            "latents_classes is int32",
        ),
        "non-binary": ({"imgs": grey}, "non-binary pixels: image 7"),
        "out of range": ({"latents_classes": far}, "row 3: posX class 32 is out of range"),
        "wrong values": (
            {"latents_values": arrays["latents_values"] * 2},
            "latents_values row 0 do not match",
        ),
    }


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
@pytest.mark.parametrize(
    "case",
    [
        "wrong keys",
        "wrong shape",
        "short rows",
        "wrong dtype",
        "wrong dtype 2",
        "non-binary",
        "out of range",
        "wrong values",
    ],
)
def test_bad_files_are_refused(
    official_file: WriteFile, official_arrays: dict[str, np.ndarray], case: str, suffix: str
) -> None:
    changes, message = _bad_files(official_arrays)[case]
    path = official_file("bad" + suffix, **changes)
    with pytest.raises(CausalSpritesError, match=message):
        DSprites.load(path)
    with pytest.raises(CausalSpritesError, match=message):
        dsprites.verify(path, num_images=NUM)


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_reordered_rows_fail_verification(
    official_file: WriteFile, official_arrays: dict[str, np.ndarray], suffix: str
) -> None:
    path = official_file("reordered" + suffix, **_swap_rows(official_arrays))
    with pytest.raises(CausalSpritesError, match="reordered rows: row 10 has classes"):
        dsprites.verify(path, num_images=NUM)
    assert len(DSprites.load(path)) == NUM  # any subset and order loads


def test_missing_empty_foreign_and_truncated_files(
    official_file: WriteFile, tmp_path: Path
) -> None:
    with pytest.raises(CausalSpritesError, match="no such file"):
        dsprites.verify(tmp_path / "missing.npz")
    with pytest.raises(CausalSpritesError, match="is a directory"):
        DSprites.load(tmp_path)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CausalSpritesError, match="is empty"):
        DSprites.load(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CausalSpritesError, match="neither an"):
        dsprites.verify(tmp_path / "text.npz")
    for suffix, message in ((".npz", "truncated or corrupt zip"), (".hdf5", "corrupt hdf5")):
        path = official_file("whole" + suffix)
        cut = tmp_path / ("cut" + suffix)
        cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        for check in (DSprites.load, dsprites.verify):
            with pytest.raises(CausalSpritesError, match=message):
                check(cut)


def test_corrupt_member_is_caught(tmp_path: Path, official_arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "stored.npz"
    np.savez(path, **official_arrays)  # stored, not deflated: a flipped byte only breaks the CRC
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("imgs.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 200 + info.file_size // 2] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CausalSpritesError, match="corrupt zip archive"):
        dsprites.verify(path, num_images=NUM)


def test_known_checksums(official_file: WriteFile) -> None:
    path = official_file(dsprites.HDF5_FILENAME)
    with pytest.raises(
        CausalSpritesError, match=r"checksum mismatch: \d+ bytes, expected 28024106"
    ):
        dsprites.verify(path, num_images=NUM)
    with pytest.raises(CausalSpritesError, match="checksum mismatch: sha256"):
        dsprites.verify(path, "0" * 64, num_images=NUM)


def test_packed_cache_is_used_and_invalidated(
    official_file: WriteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dsprites, "CACHE_MIN_IMAGES", 0)
    path = official_file()
    first = DSprites.load(path)
    cache = path.with_name(path.name + ".packed.npz")
    assert cache.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert cache.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def no_read(_: Path) -> None:
        raise AssertionError("read the file despite a current cache")

    with monkeypatch.context() as patch:
        patch.setattr(dsprites, "_read", no_read)
        again = DSprites.load(path)
    np.testing.assert_array_equal(again.packed, first.packed)
    np.testing.assert_array_equal(again.classes(slice(None)), first.classes(slice(None)))
    os.utime(path, ns=(0, 0))
    with monkeypatch.context() as patch:
        patch.setattr(dsprites, "_read", no_read)
        with pytest.raises(AssertionError):
            DSprites.load(path)


# --- default data ------------------------------------------------------------------------------


def test_data_dir_and_default_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAUSAL_SPRITES_DATA", str(tmp_path / "data"))
    assert dsprites.default_path() == tmp_path / "data" / dsprites.DEFAULT_FILENAME
    monkeypatch.delenv("CAUSAL_SPRITES_DATA")
    assert dsprites.data_dir() == Path.home() / ".cache" / "causal_sprites"
    monkeypatch.setenv("CAUSAL_SPRITES_DATA", str(tmp_path / "data"))

    from causal_sprites.data import render

    calls: list[Path] = []

    def fake_write_npz(path: Path, progress: Callable[[int, int], None] | None = None) -> None:
        calls.append(path)
        assert progress is not None
        progress(1, 2)
        path.write_bytes(b"")

    monkeypatch.setattr(render, "write_npz", fake_write_npz, raising=False)
    assert dsprites.ensure_default_data(progress=False) == dsprites.default_path()
    assert dsprites.ensure_default_data(progress=False) == dsprites.default_path()
    assert calls == [dsprites.default_path()]


# --- download ----------------------------------------------------------------------------------


def test_download(
    official_file: WriteFile, http_server: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    url, routes = http_server
    body = official_file().read_bytes()
    routes["/files/tiny.npz"] = routes["/broken/tiny.npz"] = body
    out = tmp_path / "out"
    digest = hashlib.sha256(body).hexdigest()
    path = dsprites.download(out, f"{url}/files/tiny.npz", digest, False, num_images=NUM)
    assert path == out / "tiny.npz" and path.read_bytes() == body
    path.unlink()
    failures = {
        "/files/tiny.npz": "checksum mismatch",
        "/broken/tiny.npz": "broke off after",
        "/missing.npz": "HTTP 404",
    }
    for route, message in failures.items():
        with pytest.raises(CausalSpritesError, match=message):
            dsprites.download(out, url + route, "0" * 64, False, num_images=NUM)
        assert list(out.iterdir()) == []  # no final file, no partial file
    with pytest.raises(CausalSpritesError, match="wrong shape: 2048 images"):
        dsprites.download(out, f"{url}/files/tiny.npz", progress=False)
    assert list(out.iterdir()) == []


def test_download_without_network(tmp_path: Path) -> None:
    with pytest.raises(CausalSpritesError, match="needs the network"):
        dsprites.download(tmp_path, "http://127.0.0.1:9/dsprites.npz", progress=False)
    with pytest.raises(CausalSpritesError, match="bad download URL"):
        dsprites.download(tmp_path, "file:///etc/passwd", progress=False)
    assert list(tmp_path.iterdir()) == []


# --- the store ---------------------------------------------------------------------------------


def test_accessors(subset_data: DSprites, subset_classes: np.ndarray) -> None:
    assert len(subset_data) == len(subset_classes) == 180
    assert subset_data.images([0, 5]).shape == (2, 64, 64)
    assert subset_data.images(3).shape == (64, 64)
    assert subset_data.images(np.array([], dtype=np.int64)).shape == (0, 64, 64)
    np.testing.assert_array_equal(subset_data.classes([4, 2]), subset_classes[[4, 2]])
    np.testing.assert_array_equal(subset_data.factors([4]), subset_classes[[4], 1:])
    assert subset_data.values([1]).dtype == np.float64
    for bad, message in (([180], "index 180 is out of range"), ([-1], "index -1"), ([0.5], "int")):
        with pytest.raises(CausalSpritesError, match=message):
            subset_data.images(bad)


def test_from_arrays_validates(subset_classes: np.ndarray) -> None:
    images = np.zeros((2, 64, 64), np.uint8)
    five = DSprites.from_arrays(images, subset_classes[:2, 1:])
    np.testing.assert_array_equal(five.classes(slice(None)), subset_classes[:2])
    with pytest.raises(CausalSpritesError, match="non-binary"):
        DSprites.from_arrays(images + 2, subset_classes[:2])
    with pytest.raises(CausalSpritesError, match=r"classes must be \(N, 6\)"):
        DSprites.from_arrays(images, subset_classes[:3])
    with pytest.raises(CausalSpritesError, match="scale class 6 is out of range"):
        DSprites.from_arrays(images, np.array([[0, 0, 6, 0, 0, 0]] * 2))


def test_index_and_find(subset_data: DSprites, official_arrays: dict[str, np.ndarray]) -> None:
    official = DSprites.from_arrays(official_arrays["imgs"], official_arrays["latents_classes"])
    assert official.index(shape=0, scale=0, orientation=1, posX=3, posY=4) == 1024 + 3 * 32 + 4
    row = subset_data.index(shape="heart", scale=5, orientation=10, posX=25, posY=31)
    np.testing.assert_array_equal(subset_data.factors(row), [2, 5, 10, 25, 31])
    with pytest.raises(CausalSpritesError, match="no image with shape=2, scale=1"):
        subset_data.index(shape=2, scale=1, orientation=0, posX=0, posY=0)
    with pytest.raises(CausalSpritesError, match="missing posY"):
        subset_data.index(shape=2, scale=1, orientation=0, posX=0)
    neither = r"neither a class \(square, ellipse, heart\) nor a class index 0..2"
    with pytest.raises(CausalSpritesError, match=neither):
        subset_data.index(shape=3, scale=1, orientation=0, posX=0, posY=0)
    hearts = subset_data.find(shape="heart", posX=31)
    factors = subset_data.factors(slice(None))
    np.testing.assert_array_equal(
        hearts, np.flatnonzero((factors[:, 0] == 2) & (factors[:, 3] == 31))
    )
    assert len(hearts) == 12 and hearts.dtype == np.int64
    assert len(subset_data.find()) == 180
    with pytest.raises(CausalSpritesError, match="unknown factor 'colour'"):
        subset_data.find(colour=0)


def test_repeated_rows(subset_data: DSprites, subset_classes: np.ndarray) -> None:
    rows = np.array([5, 5, 7, 5])
    repeated = DSprites(subset_data.packed[rows], subset_classes[rows])
    assert repeated.index(**dict(zip(FACTORS, subset_classes[7, 1:].tolist(), strict=True))) == 2
    np.testing.assert_array_equal(repeated.images([0, 3]), subset_data.images([5, 5]))


def test_random_split(subset_data: DSprites) -> None:
    train, test = subset_data.split("random", test_fraction=0.25, seed=3)
    assert len(test) == 45 and len(train) == 135
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(180))
    again = subset_data.split("random", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(subset_data.split("random", test_fraction=0.25, seed=4)[1], test)
    with pytest.raises(CausalSpritesError, match="outside"):
        subset_data.split("random", test_fraction=1.5)
    with pytest.raises(CausalSpritesError, match="unknown split"):
        subset_data.split("diagonal")  # type: ignore[arg-type]


def test_heldout_split(subset_data: DSprites) -> None:
    train, test = subset_data.split("heldout")
    factors = subset_data.factors(slice(None))
    held = (factors[:, 0] == 2) & (factors[:, 3] > 24)
    np.testing.assert_array_equal(test, np.flatnonzero(held))
    np.testing.assert_array_equal(train, np.flatnonzero(~held))
    _, scale_test = subset_data.split("heldout", holdout={"scale": [5], "orientation": 10})
    np.testing.assert_array_equal(
        scale_test, np.flatnonzero((factors[:, 1] == 5) & (factors[:, 2] == 10))
    )
    with pytest.raises(CausalSpritesError, match="match no rows"):
        subset_data.split("heldout", holdout={"scale": 3})
    with pytest.raises(CausalSpritesError, match="match every row"):
        subset_data.split("heldout", holdout={"posY": [0, 16, 31]})


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_dataset_and_loader(subset_data: DSprites, dtype: torch.dtype) -> None:
    rows = np.arange(3, 180, 2)
    dataset = subset_data.dataset(rows, dtype)
    x, y = dataset[4]
    assert (
        x.shape == (1, 64, 64) and x.dtype == dtype and y.shape == (5,) and y.dtype == torch.int64
    )
    np.testing.assert_array_equal(x[0].numpy(), subset_data.images(rows[4]))
    loader = subset_data.loader(rows, batch_size=32, shuffle=False, dtype=dtype)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b[0]) for b in batches] == [32, 32, 25]
    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    assert xs.shape == (89, 1, 64, 64) and xs.dtype == dtype and ys.dtype == torch.int64
    np.testing.assert_array_equal(xs[:, 0].numpy(), subset_data.images(rows))
    np.testing.assert_array_equal(ys.numpy(), subset_data.factors(rows))


def test_loader_shuffles_reproducibly(subset_data: DSprites) -> None:
    def order(seed: int) -> np.ndarray:
        loader = subset_data.loader(batch_size=50, seed=seed, dtype=torch.uint8, drop_last=True)
        ys = torch.cat([y for _, y in loader]).numpy()
        xs = torch.cat([x for x, _ in subset_data.loader(batch_size=50, seed=seed)])
        assert xs.shape == (180, 1, 64, 64)
        return ys

    first = order(1)
    assert len(first) == 150
    np.testing.assert_array_equal(first, order(1))
    assert not np.array_equal(first, order(2))
    with pytest.raises(CausalSpritesError, match="uint8 or floating point"):
        subset_data.dataset(None, torch.int32)


def test_device_bit_table_matches_numpy_unpacking() -> None:
    """The accelerator path (a byte -> bits table) agrees with numpy's unpackbits."""
    from causal_sprites.data.dsprites import _bit_table

    packed = torch.randint(0, 256, (8, 512), dtype=torch.uint8)
    bits = _bit_table(packed.device).index_select(0, packed.reshape(-1).int()).reshape(8, 64, 64)
    assert torch.equal(bits, torch.from_numpy(dsprites.unpack(packed.numpy())))
