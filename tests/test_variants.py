"""Causal variants: spec validation, sampling against the CPTs, noise, true counterfactuals.

Statistical checks use fixed seeds and a chi-square goodness-of-fit test at alpha = 1e-3.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import FACTORS, SCHEMA, SIZES
from causal_sprites.data.render import render
from causal_sprites.data.variants import (
    VariantSpec,
    distribution,
    joint,
    load_spec,
    mechanism,
    parse_spec,
    read_variant,
    sample_classes,
    sample_variant,
    shift_table,
    true_counterfactual,
)
from causal_sprites.errors import CausalSpritesError

EXAMPLES = Path(__file__).parents[1] / "examples" / "variants"
EXPECTED_EDGES = {
    "chain": {("shape", "scale"), ("scale", "posX")},
    "fork": {("shape", "scale"), ("shape", "posX")},
    "collider": {("shape", "posY"), ("scale", "posY")},
}


def _spec(**changes: object) -> dict:
    base = {
        "name": "t",
        "num_samples": 200,
        "seed": 1,
        "edges": [["shape", "scale"], ["scale", "posX"]],
        "mechanisms": {
            "scale": {
                "parents": ["shape"],
                "table": [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0] * 4 + [1, 1]],
            },
            "posX": {"parents": ["scale"], "shift": {"strength": 2}},
        },
    }
    return {**base, **changes}


def _rows(noise: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[rows] for name, value in noise.items()}


@pytest.fixture(scope="module")
def chain() -> VariantSpec:
    return parse_spec(_spec())


@pytest.mark.parametrize("name", sorted(EXPECTED_EDGES))
def test_examples_load_with_their_graphs(name: str) -> None:
    spec = load_spec(EXAMPLES / f"{name}.yaml")
    assert spec.name == name and spec.num_samples >= 20_000
    assert set(spec.edges) == EXPECTED_EDGES[name]
    again = parse_spec(spec.to_dict())
    assert again.edges == spec.edges
    for node in FACTORS:
        np.testing.assert_allclose(again.tables[node], spec.tables[node])


def test_tables_are_normalised_and_unlisted_nodes_uniform(chain: VariantSpec) -> None:
    np.testing.assert_allclose(chain.tables["scale"][0], [0.5, 0.5, 0, 0, 0, 0])
    np.testing.assert_allclose(chain.tables["orientation"], np.full(40, 1 / 40))
    assert chain.tables["posX"].shape == (6, 32)
    assert chain.order.index("shape") < chain.order.index("scale") < chain.order.index("posX")
    assert chain.descendants(["shape"]) == {"scale", "posX"}
    assert chain.graph_string() == "shape->scale,scale->posX"


def test_shift_helper_moves_its_bump_with_the_parent() -> None:
    sizes = SCHEMA.size_of
    table = shift_table(["shape"], "posX", 2.0, sizes)
    assert table.shape == (3, 32)
    np.testing.assert_allclose(table.sum(-1), 1.0)
    assert list(np.argmax(table, -1)) == sorted(np.argmax(table, -1)) and table[0, 0] > table[2, 0]
    np.testing.assert_allclose(shift_table(["shape"], "posX", 0.0, sizes), 1 / 32)
    assert shift_table(["shape", "scale"], "posY", 2.0, sizes).shape == (3, 6, 32)


BAD_SPECS = {
    "cycle": (_spec(edges=[["shape", "scale"], ["scale", "shape"]], mechanisms={}), "cycle"),
    "unknown factor": (_spec(edges=[["shape", "colour"]]), "unknown factor 'colour'"),
    "unknown mechanism": (_spec(mechanisms={"size": {"table": [1]}}), "unknown factor 'size'"),
    "wrong shape": (
        _spec(mechanisms={"scale": {"parents": ["shape"], "table": [[1] * 6] * 2}}),
        "has shape (2, 6), expected (3, 6)",
    ),
    "ragged": (
        _spec(mechanisms={"scale": {"parents": ["shape"], "table": [[1] * 6, [1], [1]]}}),
        "not a rectangular array",
    ),
    "negative": (
        _spec(mechanisms={"scale": {"parents": ["shape"], "table": [[1, -1, 1, 1, 1, 1]] * 3}}),
        "negative",
    ),
    "zero row": (
        _spec(mechanisms={"scale": {"parents": ["shape"], "table": [[0] * 6] * 3}}),
        "summing to 0",
    ),
    "parents mismatch": (
        _spec(mechanisms={"scale": {"parents": ["posY"], "table": [[1] * 6] * 32}}),
        "edges into it are [shape]",
    ),
    "no mechanism": (_spec(mechanisms={}), "has parents in edges but no mechanism"),
    "table and shift": (
        _spec(mechanisms={"scale": {"table": [[1] * 6] * 3, "shift": {"strength": 1}}}),
        "exactly one of",
    ),
    "bad strength": (
        _spec(mechanisms={"scale": {"shift": {"strength": -1}}, "posX": {"table": [[1] * 32] * 6}}),
        "strength",
    ),
    "no samples": (_spec(num_samples=0), "num_samples must be an integer >= 1"),
    "unknown key": (_spec(graph=[]), "unknown spec keys graph"),
    "self loop": (_spec(edges=[["shape", "shape"]], mechanisms={}), "self-loop"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_fail_with_one_line(case: str, tmp_path: Path) -> None:
    raw, message = BAD_SPECS[case]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CausalSpritesError, match=r"spec\.yaml: ") as info:
        load_spec(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_files_fail_cleanly(tmp_path: Path) -> None:
    with pytest.raises(CausalSpritesError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("edges: [[shape, scale]\nname: x\n")
    with pytest.raises(CausalSpritesError, match="bad YAML at line"):
        load_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(CausalSpritesError, match="must be a mapping"):
        load_spec(bad)


def test_json_specs_work_too(tmp_path: Path) -> None:
    import json

    path = tmp_path / "v.json"
    path.write_text(json.dumps({**_spec(), "name": "from-json"}))
    assert load_spec(path).name == "from-json"


def test_sampled_frequencies_match_the_tables() -> None:
    spec = load_spec(EXAMPLES / "fork.yaml")
    classes, _ = sample_classes(spec)
    s, c, x = (FACTORS.index(n) for n in ("shape", "scale", "posX"))
    for shape in range(3):
        rows = classes[:, s] == shape
        for child, size in ((c, 6), (x, 32)):
            observed = np.bincount(classes[rows, child], minlength=size)
            expected = spec.tables[FACTORS[child]][shape] * rows.sum()
            keep = expected > 0
            assert observed[~keep].sum() == 0
            assert stats.chisquare(observed[keep], expected[keep]).pvalue > 1e-3
    orientation = np.bincount(classes[:, FACTORS.index("orientation")], minlength=40)
    assert stats.chisquare(orientation).pvalue > 1e-3


def test_variant_file_is_official_format_and_noise_reproduces_it(
    chain: VariantSpec, tmp_path: Path
) -> None:
    path = sample_variant(chain, tmp_path / "chain.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["chain.npz"]  # no temporaries left
    data = DSprites.load(path)
    assert len(data) == chain.num_samples
    classes = data.factors(slice(None))
    np.testing.assert_array_equal(data.images(slice(None)), render(classes))
    with np.load(path, allow_pickle=False) as archive:
        assert archive["imgs"].dtype == np.uint8 and archive["latents_classes"].shape == (200, 6)
        assert all(archive[k].dtype != object for k in archive.files)
    spec, noise = read_variant(path)
    assert spec.edges == chain.edges and noise["posX"].shape == (200, 32)
    assert noise["posX"].dtype == np.float32
    again = np.zeros_like(classes)
    for node in spec.order:
        again[:, FACTORS.index(node)] = mechanism(spec, node, again, noise[node])
    np.testing.assert_array_equal(again, classes)


def test_read_variant_refuses_plain_dsprites(tmp_path: Path, official_file) -> None:
    with pytest.raises(CausalSpritesError, match="not a causal variant"):
        read_variant(official_file())
    with pytest.raises(CausalSpritesError, match="no such file"):
        read_variant(tmp_path / "none.npz")


def test_counterfactual_of_the_observed_value_is_the_identity(chain: VariantSpec) -> None:
    classes, noise = sample_classes(chain)
    images = render(classes)
    for name in FACTORS:
        cf, cf_images = true_counterfactual(chain, noise, classes, {name: 0})
        same = classes[:, FACTORS.index(name)] == 0
        np.testing.assert_array_equal(cf[same], classes[same])
        np.testing.assert_array_equal(cf_images[same], images[same])


def test_counterfactual_recomputes_descendants_only(chain: VariantSpec) -> None:
    classes, noise = sample_classes(chain)
    cf, images = true_counterfactual(chain, noise, classes, {"shape": "heart"})
    assert (cf[:, 0] == 2).all()
    np.testing.assert_array_equal(cf[:, 2], classes[:, 2])  # orientation: not a descendant
    np.testing.assert_array_equal(cf[:, 4], classes[:, 4])
    assert (cf[:, 1] >= 4).all()  # hearts only come in the two largest scales
    np.testing.assert_array_equal(images, render(cf))
    changed = cf[:, 1] != classes[:, 1]
    assert changed.any() and (cf[changed, 3] != classes[changed, 3]).any()
    # Intervening on the child leaves its parent alone.
    cf, _ = true_counterfactual(chain, noise, classes, {"scale": 3})
    np.testing.assert_array_equal(cf[:, 0], classes[:, 0])
    # Descendants follow the same noise: do(scale) then read scale's own mechanism for posX.
    rows = np.arange(5)
    cf, _ = true_counterfactual(chain, _rows(noise, rows), classes[rows], {"scale": 5})
    expected = mechanism(chain, "posX", cf, noise["posX"][rows])
    np.testing.assert_array_equal(cf[:, 3], expected)


def test_counterfactual_checks_the_noise(chain: VariantSpec) -> None:
    classes, noise = sample_classes(chain)
    with pytest.raises(CausalSpritesError, match="noise of shape has shape"):
        true_counterfactual(chain, _rows(noise, np.arange(3)), classes[:4], {"shape": 0})
    with pytest.raises(CausalSpritesError, match="unknown factor"):
        true_counterfactual(chain, noise, classes, {"size": 0})


def test_exact_distributions_tell_conditioning_from_intervening(chain: VariantSpec) -> None:
    assert joint(chain).shape == tuple(SIZES)
    np.testing.assert_allclose(joint(chain).sum(), 1.0)
    conditioned = distribution(chain, "shape", given={"posX": 31})
    intervened = distribution(chain, "shape", do={"posX": 31})
    np.testing.assert_allclose(intervened, 1 / 3)  # do() cuts posX from its ancestors
    assert conditioned[2] > 0.5
    np.testing.assert_allclose(
        distribution(chain, "scale", do={"shape": 0}), chain.tables["scale"][0]
    )
    with pytest.raises(CausalSpritesError, match="probability zero"):
        distribution(chain, "posX", given={"shape": 0, "scale": 5})
