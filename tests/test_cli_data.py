"""The `data` commands and `demo`: outputs, one-line errors (exit 1), usage errors (exit 2)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_run import PNG, run

from causal_sprites.data import dsprites, pendulum
from causal_sprites.data.dataset import load_dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.demo import shortfalls

NUM = 2048


@pytest.fixture
def subset_file(
    tmp_path: Path,
    subset_data: DSprites,
    write_dsprites: Callable[[Path, dict[str, np.ndarray]], Path],
) -> Path:
    """The tiny subset (every shape) as an .npz."""
    rows = np.arange(len(subset_data))
    classes = subset_data.classes(rows)
    return write_dsprites(
        tmp_path / "subset.npz",
        {
            "imgs": subset_data.images(rows),
            "latents_classes": classes,
            "latents_values": subset_data.values(rows),
        },
    )


def test_verify(
    official_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = official_file()
    _, err = run("data", "verify", path, code=1)
    assert f"wrong shape: {NUM} images, expected 737280" in err
    monkeypatch.setattr(dsprites, "verify", functools.partial(dsprites.verify, num_images=NUM))
    out, _ = run("data", "verify", path)
    assert out.startswith(f"ok: {path} (npz, {NUM} images, sha256 ")
    summary = json.loads(run("data", "verify", path, "--json")[0])
    assert summary["num_images"] == NUM and summary["checksum"] == "not known"
    assert (
        json.loads(run("data", "verify", path, "--json", "--sha256", summary["sha256"])[0])[
            "checksum"
        ]
        == "matched"
    )
    assert "checksum mismatch" in run("data", "verify", path, "--sha256", "ab", code=1)[1]


def test_verify_bad_files(
    official_file: Callable[..., Path], official_arrays: dict[str, np.ndarray], tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    evil = np.empty(1, dtype=object)
    evil[0] = functools.partial(Path.touch, marker)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(official_file().read_bytes()[:5000])
    cases = {
        tmp_path / "missing.npz": "no such file",
        cut: "truncated or corrupt zip",
        official_file("keys.npz", latents_values=None): "wrong keys",
        official_file("pickled.npz", imgs=evil): "pickled object array",
        official_file("dtype.hdf5", imgs=official_arrays["imgs"].astype(np.int16)): "wrong dtype",
    }
    for path, message in cases.items():
        assert message in run("data", "verify", path, code=1)[1]
    assert not marker.exists()


def test_show(subset_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "hearts.png"
    args = ("data", "show", "--data", subset_file, "--out", out)
    assert run(*args, "--given", "shape=heart", "--given", "posX=31", "--num", "4")[0] == f"{out}\n"
    assert out.read_bytes().startswith(PNG)
    assert [p.name for p in out.parent.iterdir()] == ["hearts.png"]  # no temp file left
    run(*args, "--given", "shape=heart", "--given", "posX=31", "--num", "500", "--seed", "3")
    assert "bad value 'circle' for shape" in run(*args, "--given", "shape=circle", code=1)[1]
    assert "out of range" in run(*args, "--given", "posX=32", code=1)[1]
    assert "no images match scale=3" in run(*args, "--given", "scale=3", code=1)[1]
    assert "bad assignment" in run(*args, "--given", "shape", code=1)[1]
    run(*args, "--num", "0", code=2)
    run("data", "show", "--data", subset_file, code=2)
    run("data", "frobnicate", code=2)


def test_generate_and_demo(
    subset_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from causal_sprites.data import render

    def fake_write_npz(path: Path, progress: Callable[[int, int], None] | None = None) -> None:
        path.write_bytes(subset_file.read_bytes())

    monkeypatch.setattr(render, "write_npz", fake_write_npz, raising=False)
    out = tmp_path / "generated"
    assert run("data", "generate", "--out", out)[0] == f"{out / dsprites.DEFAULT_FILENAME}\n"
    monkeypatch.setenv("CAUSAL_SPRITES_DATA", str(tmp_path / "data"))
    stdout, _ = run("demo", "--out", tmp_path / "demo", "--minutes", "0.02", "--device", "cpu")
    assert f"{tmp_path / 'demo' / 'samples.png'}\n" in stdout
    figures = ("samples", "reconstructions", "edit", "traversals", "nelbo", "condition")
    for figure in (*figures, "intervene", "counterfactual"):
        assert (tmp_path / "demo" / f"{figure}.png").read_bytes().startswith(PNG)
    scores = json.loads((tmp_path / "demo" / "evaluation.json").read_text())
    assert scores["test_nelbo"] > 0 and 0 <= scores["recon_iou"] <= 1
    assert dsprites.default_path().exists()
    app_line = next(line for line in stdout.splitlines() if "in the web app:" in line)
    assert Path(app_line.split(": ", 1)[1].split()[0]).is_file()  # works as printed, no PATH
    # The shipped pretrained model answers too, in its own folder, and the demo says which
    # model is right: a 1-second model is not, so the app line points at the pretrained one.
    for figure in ("condition", "intervene", "counterfactual", "report"):
        suffix = "html" if figure == "report" else "png"
        assert (tmp_path / "demo" / "pretrained" / f"{figure}.{suffix}").stat().st_size > 0
    assert "is not right yet" in stdout and app_line.endswith(" app pretrained")


def test_the_demo_calls_a_model_right_only_when_it_reads_every_factor() -> None:
    read = {"shape": 1.0, "scale": 0.99, "orientation": 0.985, "posX": 1.0, "posY": 0.999}
    scores = {"readout": {"posterior": {"image_equivalent": read}}, "recon_iou": 0.995}
    assert shortfalls(scores) == []
    weak = {**scores, "recon_iou": 0.9}
    weak["readout"] = {"posterior": {"image_equivalent": {**read, "orientation": 0.95}}}
    assert shortfalls(weak) == [
        "reads orientation right 0.950 of the time (< 0.98)",
        "reconstructs with IoU 0.900 (< 0.98)",
    ]


def test_help_names_the_app_extra() -> None:
    assert "causal-sprites[app]" in " ".join(run("--help")[0].split())


def test_download(
    official_file: Callable[..., Path],
    http_server: tuple[str, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    url, routes = http_server
    routes["/tiny.npz"] = official_file().read_bytes()
    out = tmp_path / "out"
    args = ("data", "download", "--out", out)
    _, err = run(*args, "--url", f"{url}/tiny.npz", "--sha256", "00", code=1)
    assert err.startswith(f"error: {url}/tiny.npz: checksum mismatch: sha256 ")
    assert "needs the network" in run(*args, "--url", "http://127.0.0.1:9/x.npz", code=1)[1]
    assert list(out.iterdir()) == []


def test_console_script_prints_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    result = subprocess.run(
        [sys.executable, "-m", "causal_sprites", "data", "verify", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"error: no such file: {missing}\n" and result.stdout == ""


def test_generate_the_pendulum(tmp_path: Path) -> None:
    path = tmp_path / "sets" / "pendulum.npz"
    args = ("data", "generate", "--dataset", "pendulum", "--out", path)
    out, _ = run(*args, "--num-samples", 7, "--shadow-noise", 0.2, "--size", 96, "--seed", 4)
    size = "96x96 pixels (height x width)"
    assert out == f"{path}: 7 images of the pendulum ({size}, shadow noise 0.2 world units)\n"
    summary = json.loads(run("data", "info", path, "--json")[0])
    assert summary["num_images"] == 7 and summary["image_shape"] == [96, 96, 3]
    schema = summary["schema"]
    assert [f["name"] for f in schema["factors"]] == list(pendulum.FACTOR_NAMES)
    assert schema["graph"] == [list(edge) for edge in pendulum.EDGES]
    assert schema["shadow_noise"] == 0.2 and schema["factors"][2]["low"] == pytest.approx(2.2)
    data = load_dataset(path)
    same = pendulum.generate(num_samples=7, size=96, shadow_noise=0.2, seed=4)
    assert np.array_equal(data.images(slice(None)), same.images(slice(None)))
    assert np.array_equal(data.extra["noise_shadow_position"], same.extra["noise_shadow_position"])
    assert "factor pendulum_angle: continuous, -36..38.7 degrees" in run("data", "info", path)[0]
    bad = tmp_path / "bad.npz"
    for flags, message in [
        (("--size", 32), "64 or 96 pixels a side, not 32"),
        (("--shadow-noise", -1), "shadow noise -1 is outside 0..0.75"),
        (("--num-samples", 0), "at least 1, got 0"),
        (("--grid", "causalvae", "--num-samples", 5), "drop --num-samples"),
        (("--grid", "mnist"), "unknown grid 'mnist'"),
    ]:
        err = run("data", "generate", "--dataset", "pendulum", "--out", bad, *flags, code=1)[1]
        assert message in err
    assert "needs --out" in run("data", "generate", "--dataset", "pendulum", code=1)[1]
    assert "unknown dataset 'mnist'" in run("data", "generate", "--dataset", "mnist", code=1)[1]
    err = run("data", "generate", "--size", 96, "--out", tmp_path, code=1)[1]
    assert "--size is for --dataset pendulum" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sets"]


@pytest.mark.slow
def test_generate_the_causalvae_grid(tmp_path: Path) -> None:
    path = tmp_path / "grid.npz"
    run("data", "generate", "--dataset", "pendulum", "--grid", "causalvae", "--out", path)
    summary = json.loads(run("data", "info", path, "--json")[0])
    assert summary["num_images"] == 7308
    assert summary["ranges"]["light_angle"] == pytest.approx([54.0, 132.3])
    assert summary["ranges"]["shadow_length"][0] == 3.0
