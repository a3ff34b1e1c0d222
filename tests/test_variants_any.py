"""Causal variants of any dataset holding every factor combination: a spec names the dataset's
factors, a sample's image is a base image with exactly its classes (its recorded nuisance kept),
the true counterfactual is the base image with the counterfactual classes and the same nuisance,
and counterfactuals are scored against it: a perfect stand-in model scores its own ceiling, 0
error where the answer is identified. dSprites variants stay bit for bit as they were."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from causal_sprites.config import PRESETS, RunConfig
from causal_sprites.data.dataset import load_dataset, write_dataset
from causal_sprites.data.schema import Factor, Schema, categorical
from causal_sprites.data.variants import (
    BASE_ROW,
    VariantSpec,
    abduct_noise,
    counterfactual_classes,
    load_spec,
    parse_spec,
    read_variant,
    sample_classes,
    sample_variant,
    true_candidates,
    true_counterfactual,
    true_images,
    variant_of,
)
from causal_sprites.errors import CausalSpritesError
from causal_sprites.evaluation import evaluate_counterfactuals
from causal_sprites.scm.graph import FactorGraph
from causal_sprites.scm.results import CounterfactualResult
from causal_sprites.train import fit
from tests.cli_run import run as cli

HUES = ((220, 40, 40), (40, 200, 60), (50, 70, 230))
SIDES, LEFTS, GREYS = (6, 12), (4, 12, 20), (70, 150)
SCHEMA = Schema(
    name="tiles",
    factors=(
        categorical("hue", ["red", "green", "blue"]),
        categorical("side", SIDES, SIDES, ordered=True),
        categorical("left", LEFTS, LEFTS, ordered=True),
    ),
    image_shape=(32, 32, 3),
)
SPEC = {
    "name": "hue-sets-side",
    "num_samples": 240,
    "seed": 4,
    "edges": [["hue", "side"]],
    "mechanisms": {"side": {"table": [[9, 1], [1, 1], [1, 9]]}},
}


def draw(classes: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """Images (B, 32, 32, 3) of classes (B, 3): a coloured square on a grey background."""
    out = np.empty((len(classes), 32, 32, 3), np.uint8)
    for k, ((hue, side, left), grey) in enumerate(zip(classes, brightness, strict=True)):
        out[k] = grey
        size, start = SIDES[side], LEFTS[left]
        out[k, 10 : 10 + size, start : start + size] = HUES[hue]
    return out


def write_base(path: Path, nuisance: bool = True, drop: int = 0) -> Path:
    """Every combination on both backgrounds (twice, rows shuffled), less the first `drop`
    combinations; the background recorded as `brightness` when `nuisance`."""
    grid = np.array(list(itertools.product(range(3), range(2), range(3), range(2))))
    grid = np.concatenate([grid, grid])[np.random.default_rng(0).permutation(2 * len(grid))]
    grid = grid[~np.isin(np.ravel_multi_index(grid[:, :3].T, (3, 2, 3)), np.arange(drop))]
    classes, grey = grid[:, :3], np.array(GREYS)[grid[:, 3]]
    extra = {"brightness": grey} if nuisance else {}
    return write_dataset(path, draw(classes, grey), classes, SCHEMA, extra=extra)


def spec_file(folder: Path, base: str = "base.npz", **changes: Any) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "dataset": base, **changes}))
    return path


@pytest.fixture
def variant(tmp_path: Path) -> tuple[VariantSpec, Path]:
    write_base(tmp_path / "base.npz")
    spec = load_spec(spec_file(tmp_path))
    return spec, sample_variant(spec, tmp_path / "out" / "variant.npz")


@pytest.fixture(autouse=True)
def _folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()


def test_a_spec_names_the_dataset_s_factors(tmp_path: Path) -> None:
    write_base(tmp_path / "base.npz")
    spec = load_spec(spec_file(tmp_path))
    assert spec.schema == SCHEMA and spec.dataset == (tmp_path / "base.npz").resolve()
    assert spec.edges == (("hue", "side"),) and spec.graph_string() == "hue->side"
    np.testing.assert_allclose(spec.tables["side"], [[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    np.testing.assert_allclose(spec.tables["left"], [1 / 3] * 3)
    again = parse_spec(spec.to_dict())
    assert again.dataset == spec.dataset and again.edges == spec.edges
    classes, noise = sample_classes(spec)
    assert classes.shape == (240, 3) and noise["side"].shape == (240, 2)
    by_name, _ = true_counterfactual(spec, noise, classes, {"hue": "blue"})
    by_index, _ = true_counterfactual(spec, noise, classes, {"hue": 2})
    np.testing.assert_array_equal(by_name, by_index)
    assert (by_name[:, 0] == 2).all() and by_name[:, 1].mean() > 0.75  # blue tiles are large


def test_a_sample_is_a_base_image_with_its_classes_and_nuisance(
    variant: tuple[VariantSpec, Path],
) -> None:
    spec, path = variant
    base, data = load_dataset(path.parents[1] / "base.npz"), load_dataset(path)
    rows = data.extra[BASE_ROW]
    assert data.schema == SCHEMA and len(data) == 240 and rows.dtype == np.int64
    np.testing.assert_array_equal(data.images(slice(None)), base.images(rows))
    np.testing.assert_array_equal(data.factors(slice(None)), base.factors(rows))
    np.testing.assert_array_equal(data.extra["brightness"], base.extra["brightness"][rows])
    assert set(data.extra["brightness"].tolist()) == set(GREYS)  # both backgrounds drawn
    classes, noise = sample_classes(spec)
    np.testing.assert_array_equal(data.factors(slice(None)), classes)
    assert json.loads(str(data.extra["spec"]))["dataset"] == "../base.npz"
    read, recorded = read_variant(path)
    assert read.dataset == spec.dataset and read.edges == spec.edges and read.schema == SCHEMA
    np.testing.assert_array_equal(recorded["side"], noise["side"])
    assert variant_of(path) is not None and variant_of(path.parents[1] / "base.npz") is None
    assert [p.name for p in path.parent.iterdir()] == ["variant.npz"]  # no temporaries left
    (path.parents[1] / "base.npz").rename(path.parents[1] / "moved.npz")
    with pytest.raises(CausalSpritesError, match=r"its base dataset .*base\.npz is missing"):
        true_images(read_variant(path)[0], classes[:2])


def test_the_true_counterfactual_is_the_base_image_with_its_classes_and_nuisance(
    variant: tuple[VariantSpec, Path],
) -> None:
    spec, path = variant
    data = load_dataset(path)
    _, noise = read_variant(path)
    classes = data.factors(slice(None)).astype(np.int64)
    grey, like = data.extra["brightness"], data.extra[BASE_ROW]
    cf, images = true_counterfactual(spec, noise, classes, {"hue": "red"}, like)
    assert (cf[:, 0] == 0).all() and (cf[:, 2] == classes[:, 2]).all()
    assert (cf[:, 1] != classes[:, 1]).any()  # side follows hue through its recorded noise
    np.testing.assert_array_equal(images, draw(cf, grey))
    base = load_dataset(path.parents[1] / "base.npz")
    for rows, image in zip(true_candidates(spec, cf, like), images, strict=True):
        assert len(rows) == 2  # the base holds each tile twice: one image, recorded alike
        np.testing.assert_array_equal(base.images(rows), [image, image])
    moved, images = true_counterfactual(spec, noise, classes, {"left": 1}, like)
    np.testing.assert_array_equal(moved[:, :2], classes[:, :2])  # left has no descendants
    kept = classes[:, 2] == 1  # do(the observed value): the sample's own image
    np.testing.assert_array_equal(images[kept], data.images(np.flatnonzero(kept)))


def test_without_a_recorded_nuisance_the_truth_is_every_matching_image(tmp_path: Path) -> None:
    write_base(tmp_path / "base.npz", nuisance=False)
    spec = load_spec(spec_file(tmp_path))
    classes = np.array([[0, 1, 2], [2, 0, 0]])
    candidates = true_candidates(spec, classes, np.array([0, 1]))
    assert [len(rows) for rows in candidates] == [4, 4]  # two backgrounds, twice each
    base = load_dataset(tmp_path / "base.npz")
    for rows, wanted in zip(candidates, classes, strict=True):
        assert (base.factors(rows) == wanted).all()
    np.testing.assert_array_equal(
        true_images(spec, classes), base.images([c[0] for c in candidates])
    )


def test_bad_specs_and_bases_fail_in_one_line_and_write_nothing(tmp_path: Path) -> None:
    write_base(tmp_path / "base.npz")
    cases = {
        "unknown factor 'shape' in edges; factors are hue, side, left": {
            "edges": [["shape", "side"]]
        },
        "unknown factor 'size' in mechanisms": {"mechanisms": {"size": {"table": [1, 1]}}},
        "table of side has shape (2, 2), expected (3, 2)": {
            "mechanisms": {"side": {"table": [[1, 1], [1, 1]]}}
        },
        "no such file": {"dataset": "missing.npz"},
    }
    for message, changes in cases.items():
        with pytest.raises(CausalSpritesError, match=r"spec\.yaml: ") as info:
            load_spec(spec_file(tmp_path, **changes))
        assert message in str(info.value) and "\n" not in str(info.value)
    write_base(tmp_path / "holes.npz", drop=2)
    spec = load_spec(spec_file(tmp_path, "holes.npz"))
    out = tmp_path / "out" / "v.npz"
    with pytest.raises(CausalSpritesError) as info:
        sample_variant(spec, out)
    assert "2 of its 18 factor combinations are missing (e.g. hue=red, side=6, left=4)" in str(
        info.value
    )
    assert not out.exists() and not list(out.parent.iterdir())
    _, err = cli("data", "variant", spec_file(tmp_path, "holes.npz"), "--out", out, code=1)
    assert "2 of its 18 factor combinations are missing" in err and not out.exists()


def test_continuous_factors_are_refused(tmp_path: Path) -> None:
    angle = Factor("angle", "continuous", low=0.0, high=90.0, unit="degrees")
    schema = replace(SCHEMA, factors=(*SCHEMA.factors[:2], angle))
    grid = np.array(list(itertools.product(range(3), range(2), [10.0, 80.0])), np.float64)
    write_dataset(
        tmp_path / "base.npz", draw(np.zeros((12, 3), int), np.full(12, 90)), grid, schema
    )
    with pytest.raises(CausalSpritesError) as info:
        load_spec(spec_file(tmp_path))
    assert "factor angle of tiles is continuous: continuous mechanisms are not supported in " \
        "variants yet" in str(info.value)  # fmt: skip


def _digest(path: Path) -> str:
    """Every array but the float Gumbel noise, whose last bits differ between processors (the
    classes drawn from it, and the images, do not)."""
    digest = hashlib.sha256()
    with np.load(path, allow_pickle=False) as archive:
        for key in sorted(k for k in archive.files if not k.startswith("noise_")):
            array = archive[key]
            digest.update(f"{key} {array.dtype} {array.shape}".encode() + array.tobytes())
    return digest.hexdigest()


def test_dsprites_variant_files_are_as_they_were(tmp_path: Path) -> None:
    """Every array of the chain example's file at 3,000 samples, as before variants took any
    dataset (the arrays compared with those written at 5ae133b on the same machine)."""
    spec = load_spec(Path(__file__).parents[1] / "examples" / "variants" / "chain.yaml")
    spec = parse_spec({**spec.to_dict(), "num_samples": 3000})
    assert "dataset" not in spec.to_dict() and spec.dataset is None
    path = sample_variant(spec, tmp_path / "chain.npz")
    assert _digest(path) == "364fdf6cdfeca4ab130485a7908d7fbdb07b27c5c5b25aa0a1ce3144eb2488c6"
    with np.load(path, allow_pickle=False) as archive:
        noise = archive["noise_posX"]
        assert noise.dtype == np.float32 and noise.shape == (3000, 32)
    read, _ = read_variant(path)
    assert read.schema.name == "dSprites" and read.edges == spec.edges


class Lookup:
    """An oracle that knows the classes of every image it was shown drawn."""

    def __init__(self) -> None:
        self.classes: dict[bytes, np.ndarray] = {}

    def show(self, classes: np.ndarray, grey: np.ndarray) -> np.ndarray:
        images = draw(classes, grey)
        self.classes.update((i.tobytes(), c) for i, c in zip(images, classes, strict=True))
        return images

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.classes[image.tobytes()] for image in images])


class PerfectModel:
    """Answers as a perfect model of the variant: the background read off the pixels, the noise
    abducted from the factual classes under the true tables (the metric's own ceiling); a
    useless one returns its input."""

    def __init__(self, spec: VariantSpec, oracle: Lookup, useless: bool = False) -> None:
        self.spec, self.oracle, self.useless = spec, oracle, useless
        self.config = RunConfig(graph=spec.edges)
        self.factor_graph = FactorGraph.from_tables(spec.parents, spec.tables)

    def counterfactual_query(self, images: Any, factual: Any, do: Any, seed: int = 0) -> Any:
        factual, grey = np.asarray(factual), images[:, 0, 0, 0]
        classes = factual.copy()
        if do and not self.useless:
            ((name, values),) = do.items()
            noise = abduct_noise(self.spec, factual)
            for value in np.unique(values):
                chosen = values == value
                rows = {k: v[chosen] for k, v in noise.items()}
                classes[chosen] = counterfactual_classes(
                    self.spec, rows, factual[chosen], {name: int(value)}
                )
        return CounterfactualResult(self.oracle.show(classes, grey), factual, classes, False, 0.0)

    def counterfactual(self, images: Any, factual: Any, do: Any, seed: int = 0) -> np.ndarray:
        return self.counterfactual_query(images, factual, do, seed).images


def test_a_perfect_model_scores_its_ceiling_and_a_useless_one_far_below(
    variant: tuple[VariantSpec, Path],
) -> None:
    spec, path = variant
    data, recorded = load_dataset(path), read_variant(path)
    oracle = Lookup()
    scores = evaluate_counterfactuals(PerfectModel(spec, oracle), data, oracle, recorded, 16)
    assert scores["identified_factors"] == ["side", "left"] and scores["truth_unique"] == 1.0
    assert scores["ground_truth_mae_identified"] == 0.0 and scores["preservation_graph"] == "true"
    assert scores["ground_truth_mae"] == pytest.approx(scores["ground_truth_mae_ceiling"])
    for name, factor in scores["per_factor"].items():
        assert factor["ground_truth_mae"] == pytest.approx(factor["ground_truth_mae_ceiling"])
        assert factor["effectiveness"] == factor["preservation"] == 1.0
        assert factor["counterfactual_tv"] == factor["counterfactual_tv_floor"]
        if name == "hue":  # side is only known in distribution: not identified
            assert factor["identified"] is False and factor["ground_truth_mae_ceiling"] > 0
        else:
            assert factor["ground_truth_psnr"] == 100.0 and factor["reversibility_mae"] == 0.0
    assert scores["composition_mae_10"] == 0.0 and scores["reader"] == "the oracle"
    useless = evaluate_counterfactuals(PerfectModel(spec, oracle, True), data, oracle, recorded, 16)
    assert useless["effectiveness"] == 0.0 and useless["ground_truth_mae_identified"] > 2


@pytest.mark.slow
def test_evaluate_scores_a_run_on_a_variant_against_the_base_images(tmp_path: Path) -> None:
    write_base(tmp_path / "base.npz")
    out = tmp_path / "out" / "variant.npz"
    cli("data", "variant", spec_file(tmp_path), "--out", out)
    preset = PRESETS["images"]
    config = replace(
        preset,
        data=str(out),
        graph=(("hue", "side"),),
        model=replace(preset.model, conv_channels=16, encoder_hidden=64),
        train=replace(
            preset.train, max_steps=20, bf16=False, num_eval_images=16, test_fraction=0.25
        ),
    )
    fit(tmp_path / "run", config, load_dataset(out), torch.device("cpu"), progress=False)
    stdout, _ = cli(
        "evaluate", tmp_path / "run", "--counterfactual", "--num-images", 16,
        "--num-counterfactuals", 4, "--json",
    )  # fmt: skip
    scores = json.loads(stdout)
    assert set(scores["per_factor"]) == {"hue", "side", "left"} == set(scores["z_leakage"])
    assert scores["identified_factors"] == ["side", "left"] and scores["truth_unique"] == 1.0
    assert 0 <= scores["ground_truth_mae"] < 255 and 0 < scores["ground_truth_psnr"] <= 100
    assert scores["ground_truth_mae_ceiling"] <= scores["ground_truth_mae"]
    assert scores["composition_mae_1"] == 0.0 and "own posterior" in scores["reader"]
    entries = scores["distributions"]["entries"]
    assert {(e["set"], e["target"]) for e in entries} == {("hue", "side"), ("side", "hue")}
    assert scores["distributions"]["truth"] == "variant"
    _, err = cli("evaluate", tmp_path / "run", "--counterfactual", "--data", tmp_path / "base.npz",
                 code=1)  # fmt: skip
    assert "need a dataset whose true counterfactuals are known" in err
