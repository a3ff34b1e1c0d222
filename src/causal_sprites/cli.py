"""The `causal-sprites` command line (typer): parse, call the API, print.

Exit codes: 0 success, 1 bad input or a failed check (one `error: ...` line on stderr), 2 usage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import typer
from matplotlib.figure import Figure
from typer.core import TyperGroup

from causal_sprites.data import dsprites
from causal_sprites.data.factors import SHAPE_NAMES, normalize_assignments, parse_assignments
from causal_sprites.errors import CausalSpritesError


def fail(message: str) -> NoReturn:
    """Print `error: <message>` as one line on stderr and exit 1."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(1)


class _Group(TyperGroup):
    """A command group whose commands' bad-input errors become one line and exit 1, never a
    traceback: commands just raise CausalSpritesError (or hit an OSError)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (CausalSpritesError, OSError) as error:
            fail(str(error))


def _typer(help: str) -> typer.Typer:
    """A command group with the one-line error handling of `_Group`."""
    return typer.Typer(
        cls=_Group,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


app = _typer("Causal modelling of dSprites: a conditional VAE inside a structural causal model.")
data_app = _typer("The dSprites data: generate, verify, download, show.")
app.add_typer(data_app, name="data")


def write_png(fig: Figure, out: Path) -> Path:
    """Save a figure as PNG atomically; returns `out` (imported late: the CLI starts fast)."""
    from causal_sprites.figures import save_figure

    return save_figure(fig, out)


def _sample_grid(data: dsprites.DSprites, rows: np.ndarray, num: int, seed: int, out: Path) -> Path:
    """Write a labelled grid of up to `num` random images among `rows` to `out`."""
    from causal_sprites.viz import sample_grid_figure

    chosen = np.random.default_rng(seed).choice(rows, size=min(num, len(rows)), replace=False)
    return write_png(sample_grid_figure(data.images(chosen), data.classes(chosen)), out)


DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="dSprites .npz or .hdf5 (default: the default data)."),
]


OutDirOption = Annotated[
    Path | None, typer.Option("--out", help="Directory (default: the data directory).")
]


@data_app.command("generate")
def data_generate(
    out: OutDirOption = None,
) -> None:
    """Write the default data (the procedural generator) as an official-format .npz."""
    typer.echo(dsprites.generate((out or dsprites.data_dir()) / dsprites.DEFAULT_FILENAME))


@data_app.command("verify")
def data_verify(
    path: Annotated[Path, typer.Argument(help="A dSprites .npz or .hdf5 file.")],
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 (hex).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Exit 0 if PATH is a valid, complete dSprites file (keys, shapes, order, checksum)."""
    summary = dsprites.verify(path, sha256)
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"ok: {path} ({summary['format']}, {summary['num_images']} images, "
            f"sha256 {summary['sha256']}, checksum {summary['checksum']})"
        )


@data_app.command("download")
def data_download(
    out: OutDirOption = None,
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 (hex).")] = None,
    hdf5: Annotated[bool, typer.Option("--hdf5", help="The .hdf5 twin, not the .npz.")] = False,
    url: Annotated[str | None, typer.Option(help="Fetch from here instead.")] = None,
) -> None:
    """Download the official file, verify it, and move it into place only when whole."""
    official = dsprites.OFFICIAL_HDF5_URL if hdf5 else dsprites.OFFICIAL_URL
    typer.echo(dsprites.download(out, url=url or official, sha256=sha256))


@data_app.command("show")
def data_show(
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    data: DataOption = None,
    given: Annotated[
        list[str] | None, typer.Option(help="Only images with factor=value, e.g. shape=heart.")
    ] = None,
    num: Annotated[int, typer.Option(min=1, help="Number of images.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed of the choice.")] = 0,
) -> None:
    """A PNG grid of random images (or of those matching --given), labelled with factors."""
    assignments = parse_assignments(given or [])
    store = dsprites.DSprites.load(data)
    rows = store.find(**assignments)
    if not len(rows):
        fail(f"no images match {' '.join(given or [])}")
    typer.echo(_sample_grid(store, rows, num, seed, out))


RunArgument = Annotated[str, typer.Argument(help="Run directory, or `pretrained`.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, mps.")]


@app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="Run directory to create (or resume).")],
    data: DataOption = None,
    preset: Annotated[str, typer.Option(help="default, baseline or tiny.")] = "default",
    minutes: Annotated[float | None, typer.Option(min=0, help="Stop after M minutes.")] = None,
    epochs: Annotated[float | None, typer.Option(min=0, help="Stop after E epochs.")] = None,
    steps: Annotated[int | None, typer.Option(min=0, help="Stop after N steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: DeviceOption = "auto",
    checkpoint_every: Annotated[
        int | None, typer.Option(min=1, help="Checkpoint every STEPS steps.")
    ] = None,
    graph: Annotated[str | None, typer.Option(help='Factor DAG, e.g. "shape->scale".')] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option(min=0)] = None,
    split: Annotated[str | None, typer.Option(help="random or heldout.")] = None,
    subset: Annotated[int | None, typer.Option(min=1, help="Train on N images only.")] = None,
    bf16: Annotated[bool | None, typer.Option(help="bfloat16 autocast.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard events.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    graph_from: Annotated[
        Path | None, typer.Option(help="Take the factor DAG from a variant spec.")
    ] = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="Launch N processes with torchrun (DDP) on this machine.")
    ] = 1,
) -> None:
    """Train the conditional VAE (or resume it exactly where it stopped)."""
    from dataclasses import replace

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_torchrun(nproc))

    from causal_sprites.config import PRESETS
    from causal_sprites.runs import read_metrics
    from causal_sprites.runtime import init_distributed, leave_distributed
    from causal_sprites.train import fit
    from causal_sprites.viz import nelbo_curve_figure

    if preset not in PRESETS:
        raise CausalSpritesError(f"unknown preset {preset!r}; choose {', '.join(PRESETS)}")
    if split not in (None, "random", "heldout"):
        raise CausalSpritesError(f"unknown split {split!r}; use random or heldout")
    if minutes is None and epochs is None and steps is None:
        raise CausalSpritesError("give a budget: --minutes, --epochs or --steps")
    base = PRESETS[preset]
    overrides: dict[str, Any] = {
        "seed": seed,
        "checkpoint_every": checkpoint_every,
        "batch_size": batch_size,
        "lr": lr,
        "split": split,
        "subset": subset,
        "bf16": bf16,
    }
    train_config = replace(
        base.train,
        max_minutes=minutes,
        max_epochs=epochs,
        max_steps=steps,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    config = replace(
        base,
        train=train_config,
        data=str(data) if data else None,
        graph=_graph(graph, graph_from) or base.graph,
    )
    distributed, chosen = init_distributed(device)
    store = dsprites.DSprites.load(data)
    progress = progress and distributed.is_main
    final = fit(out, config, store, chosen, resume, progress, tensorboard)
    if distributed.is_main:
        write_png(nelbo_curve_figure(read_metrics(out)), out / "nelbo.png")
        typer.echo(
            f"{out}: step {final['step']}, test NELBO {final['test_nelbo']:.3f} nats/image "
            f"(recon {final['test_recon']:.3f}, KL {final['test_kl']:.3f})"
        )
    leave_distributed()


def _graph(text: str | None, spec: Path | None) -> tuple[tuple[str, str], ...]:
    """The factor DAG from --graph or --graph-from (not both)."""
    from causal_sprites.config import parse_graph
    from causal_sprites.data.variants import load_spec

    if text and spec:
        raise CausalSpritesError("give --graph or --graph-from, not both")
    if spec is not None:
        return tuple(load_spec(spec).edges)
    return parse_graph(text) if text else ()


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun with `nproc` processes; returns its exit code."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--nproc":
            skip = not skip
            continue
        if not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "causal_sprites", *args]  # fmt: skip
    return subprocess.call(command)


def _load(run: str, data: Path | None = None) -> tuple[Any, dsprites.DSprites]:
    """The run's model and the data it was trained on (or --data)."""
    from causal_sprites.scm.queries import load_run

    model = load_run(run)
    path = data or (Path(model.config.data) if model.config.data else None)
    return model, dsprites.DSprites.load(path)


@app.command("evaluate")
def evaluate(
    run: RunArgument,
    data: DataOption = None,
    num_images: Annotated[int, typer.Option(min=2, help="Held-out images to score.")] = 4096,
    counterfactual: Annotated[
        bool, typer.Option("--counterfactual", help="Also score counterfactual soundness.")
    ] = False,
    oracle: Annotated[
        str, typer.Option(help="Oracle classifier directory, or `pretrained`.")
    ] = "pretrained",
    num_counterfactuals: Annotated[
        int, typer.Option(min=2, help="Images per intervened factor (with --counterfactual).")
    ] = 128,
    json_out: JsonOption = False,
) -> None:
    """Test NELBO (recon, KL), reconstruction IoU, classifier accuracy and z-leakage; with
    --counterfactual also ground-truth fidelity, effectiveness, preservation, composition and
    reversibility (Monteiro et al. 2023)."""
    from causal_sprites.data.variants import variant_of
    from causal_sprites.metrics import evaluate as evaluate_run
    from causal_sprites.metrics import evaluate_counterfactuals, evaluate_distributions
    from causal_sprites.oracle import load_oracle

    model, store = _load(run, data)
    scores = evaluate_run(model, store, num_images)
    if counterfactual:
        variant = variant_of(data or (Path(model.config.data) if model.config.data else None))
        judge = load_oracle(oracle)
        scores.update(evaluate_counterfactuals(model, store, judge, variant, num_counterfactuals))
        spec = variant[0] if variant else None
        scores["distributions"] = evaluate_distributions(model, judge, spec, store)
    if json_out:
        typer.echo(json.dumps(scores))
        return
    for key, value in scores.items():
        if isinstance(value, dict) and all(isinstance(v, float) for v in value.values()):
            value = ", ".join(f"{k} {v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ", ".join(value)
        elif isinstance(value, dict):
            value = "(see --json)"
        typer.echo(f"{key:>28}: {value}")


@app.command("reconstruct")
def reconstruct(
    run: RunArgument,
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    index: Annotated[list[int], typer.Option(help="Dataset index (repeatable).")],
    data: DataOption = None,
) -> None:
    """Originals and their reconstructions."""
    from causal_sprites.viz import reconstruction_figure

    model, store = _load(run, data)
    images, classes = store.images(index), store.classes(index)
    typer.echo(write_png(reconstruction_figure(images, model.reconstruct(images, classes)), out))


@app.command("edit")
def edit(
    run: RunArgument,
    index: Annotated[int, typer.Option(help="Dataset index of the image.")],
    set_: Annotated[list[str], typer.Option("--set", help="factor=value; repeat to chain.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    data: DataOption = None,
) -> None:
    """Same z, changed labels: each --set adds to the previous ones (shape, then orientation)."""
    from causal_sprites.viz import edit_figure

    model, store = _load(run, data)
    image, classes = store.images([index]), store.classes([index])
    panels = [("reconstruction", model.reconstruct(image, classes)[0])]
    changes: dict[str, int] = {}
    for item in set_:
        changes.update(parse_assignments([item]))
        panels.append(
            (
                ", ".join(f"{k}={v}" for k, v in changes.items()),
                model.edit(image, classes, changes)[0],
            )
        )
    typer.echo(write_png(edit_figure(image[0], panels), out))


def _write_npz(path: Path, factual: np.ndarray, counterfactual: np.ndarray) -> Path:
    """Write the image arrays as a compressed .npz atomically (temp file, rename); returns path."""
    from causal_sprites.runs import atomic_path

    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, factual=factual, counterfactual=counterfactual)
    return path


def read_binary_png(path: Path) -> np.ndarray:
    """A 64x64 black-and-white image file as (64, 64) uint8 0/1; anything else is refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise CausalSpritesError(f"cannot read {path} as an image: {error}") from None
    if pixels.shape != (64, 64):
        height, width = pixels.shape
        raise CausalSpritesError(f"{path} is {width}x{height} pixels; expected a 64x64 image")
    levels = set(np.unique(pixels).tolist())
    if not (levels <= {0, 1} or levels <= {0, 255}):
        raise CausalSpritesError(
            f"{path} is not binary: it has {len(levels)} gray levels; expected black and white "
            "(0/1 or 0/255) pixels"
        )
    return (pixels > 0).astype(np.uint8)


def _assignment_text(assignments: dict[str, int]) -> str:
    """`shape=heart, scale=3`: factor values as a user would type them."""
    return ", ".join(
        f"{name}={SHAPE_NAMES[value] if name == 'shape' else value}"
        for name, value in assignments.items()
    )


def _marginals_json(marginals: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {name: [round(float(p), 6) for p in probs] for name, probs in marginals.items()}


SamplesOption = Annotated[int, typer.Option("--samples", min=1, max=4096, help="Images to draw.")]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
#: Sample images drawn in a figure (the JSON lists them all).
FIGURE_IMAGES = 64


@app.command("condition")
def condition(
    run: RunArgument,
    out: Annotated[Path, typer.Option(help="PNG: posterior bars beside sampled images.")],
    given: Annotated[
        list[str] | None, typer.Option(help="factor=value evidence, e.g. scale=5 (repeatable).")
    ] = None,
    samples: SamplesOption = 16,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """Images given factor values: the exact posterior over the other factors, then images."""
    from causal_sprites.scm.queries import load_run

    evidence = parse_assignments(given or [])
    result = load_run(run).condition_query(evidence, samples, seed)
    title = f"p(x | {_assignment_text(evidence)})" if evidence else "p(x)"
    _show_samples(result, title, out, {"given": evidence}, "posterior", json_out)


@app.command("intervene")
def intervene(
    run: RunArgument,
    do: Annotated[list[str], typer.Option("--do", help="factor=value, e.g. posX=31 (repeatable).")],
    out: Annotated[Path, typer.Option(help="PNG: marginal bars beside sampled images.")],
    samples: SamplesOption = 16,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """Images under do(factor=value): intervened factors cut from their parents, the rest
    sampled through the model."""
    from causal_sprites.scm.queries import load_run

    actions = parse_assignments(do)
    result = load_run(run).intervene_query(actions, samples, seed)
    title = f"p(x | do({_assignment_text(actions)}))"
    _show_samples(result, title, out, {"do": actions}, "marginals", json_out)


def _show_samples(
    result: Any, title: str, out: Path, query: dict[str, Any], name: str, json_out: bool
) -> None:
    """Save a conditioning or intervention result's figure; print its path or its JSON record
    (the query, the marginals under `name`, the sampled classes, timing, output path)."""
    from causal_sprites.data.factors import format_classes
    from causal_sprites.viz import query_samples_figure

    shown = slice(0, FIGURE_IMAGES)
    figure = query_samples_figure(
        result.images[shown], result.classes[shown], result.marginals, title
    )
    write_png(figure, out)
    if not json_out:
        typer.echo(out)
        return
    record = {
        **query,
        name: _marginals_json(result.marginals),
        "samples": [format_classes(c) for c in result.classes],
        "seconds": result.seconds,
        "out": str(out),
    }
    typer.echo(json.dumps(record))


@dataclass(frozen=True)
class _Query:
    """One counterfactual query: a dataset index or an image file, and its do()."""

    index: int | None
    image: Path | None
    do: dict[str, int]


def read_queries(path: Path, default_do: dict[str, int]) -> list[_Query]:
    """Parse a JSON-lines query file: {"index": I} or {"image": PNG} (relative to the file), with
    an optional "do" object (else the command line's --do); errors name the line."""
    queries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise CausalSpritesError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise CausalSpritesError(f"{where}: expected a JSON object")
        unknown = sorted(set(item) - {"index", "image", "do"})
        if unknown:
            raise CausalSpritesError(f"{where}: unknown keys {unknown}; use index, image, do")
        if ("index" in item) == ("image" in item):
            raise CausalSpritesError(f"{where}: give exactly one of index and image")
        index = item.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise CausalSpritesError(f"{where}: index must be an integer, got {index!r}")
        image = item.get("image")
        if image is not None and not isinstance(image, str):
            raise CausalSpritesError(f"{where}: image must be a path string, got {image!r}")
        do = item.get("do", default_do)
        if not isinstance(do, dict):
            raise CausalSpritesError(f'{where}: do must be an object like {{"shape": "heart"}}')
        if not do:
            raise CausalSpritesError(f'{where}: no do(); give "do" or --do')
        try:
            actions = normalize_assignments(do)
        except CausalSpritesError as error:
            raise CausalSpritesError(f"{where}: {error}") from None
        queries.append(_Query(index, None if image is None else path.parent / image, actions))
    if not queries:
        raise CausalSpritesError(f"{path} holds no queries")
    return queries


@app.command("counterfactual")
def counterfactual(
    run: RunArgument,
    do: Annotated[
        list[str] | None, typer.Option("--do", help="factor=value, e.g. shape=heart (repeatable).")
    ] = None,
    index: Annotated[
        list[int] | None, typer.Option(help="Dataset index, labels from the data (repeatable).")
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(help="A 64x64 binary PNG, labels from the classifier (repeatable)."),
    ] = None,
    queries: Annotated[
        Path | None,
        typer.Option(help='JSON lines: {"index": I} or {"image": PNG}, optional "do": {...}.'),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG: factual | counterfactual | difference.")
    ] = None,
    out_npz: Annotated[
        Path | None,
        typer.Option("--out-npz", help="factual and counterfactual images, uint8 (B, 64, 64)."),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            min=1,
            max=100_000,
            help="Also give each answer as a distribution over N draws of the abducted noise.",
        ),
    ] = None,
    data: DataOption = None,
    seed: SeedOption = 0,
    json_out: JsonOption = False,
) -> None:
    """What each image would have looked like under do(...): abduction, action, prediction."""
    from causal_sprites.data.factors import format_classes
    from causal_sprites.scm.batch import Question, answer
    from causal_sprites.scm.queries import load_run

    if sum(source is not None for source in (index, image, queries)) != 1:
        raise typer.BadParameter("give exactly one", param_hint="--index, --image or --queries")
    actions = parse_assignments(do or [])
    if queries is not None:
        if not queries.is_file():
            raise CausalSpritesError(f"query file {queries} does not exist")
        items = read_queries(queries, actions)
    elif not actions:
        raise typer.BadParameter("give at least one factor=value", param_hint="--do")
    else:
        items = [_Query(i, None, actions) for i in index or []]
        items += [_Query(None, path, actions) for path in image or []]
    model = load_run(run)
    store = None
    if any(item.index is not None for item in items):
        path = data or (Path(model.config.data) if model.config.data else None)
        store = dsprites.DSprites.load(path)
    factual = np.zeros((len(items), 64, 64), dtype=np.uint8)
    labels: dict[int, np.ndarray] = {}
    for k, item in enumerate(items):
        if store is not None and item.index is not None:
            factual[k], labels[k] = store.images(item.index), store.factors(item.index)
        elif item.image is not None:
            factual[k] = read_binary_png(item.image)
    questions = [Question(factual[k], labels.get(k), item.do) for k, item in enumerate(items)]
    answers = answer(model, questions, seed, samples)
    images, distributions = answers.images, answers.distributions
    if out is not None:
        from causal_sprites.viz import counterfactual_distribution_figure, counterfactual_figure

        shown = slice(0, FIGURE_IMAGES // 4)
        titles = [f"do({_assignment_text(item.do)})" for item in items[shown]]
        if distributions:
            parts = [distributions[k] for k in range(len(items))][shown]
            figure = counterfactual_distribution_figure(
                factual[shown],
                [p[0] for p in parts],
                [p[1] for p in parts],
                [p[2] for p in parts],
                np.stack([p[3] for p in parts]),
                titles,
            )
        else:
            figure = counterfactual_figure(factual[shown], images[shown], titles)
        write_png(figure, out)
    if out_npz is not None:
        _write_npz(out_npz, factual, images)
    records: list[dict[str, Any]] = [
        {
            "index": item.index,
            "image": None if item.image is None else str(item.image),
            "do": item.do,
            "labels": "given" if k in labels else "inferred",
            "factual": format_classes(answers.factual[k]),
            "counterfactual": format_classes(answers.counterfactual[k]),
        }
        for k, item in enumerate(items)
    ]
    for k, (tuples, probabilities, _, _, method) in distributions.items():
        records[k]["distribution"] = [
            {"factors": format_classes(t), "probability": float(p)}
            for t, p in zip(tuples, probabilities, strict=True)
        ]
        records[k]["distribution_method"] = method
    if json_out:
        summary = {
            "queries": records,
            "seconds": answers.seconds,
            "seconds_per_query": answers.seconds / len(items),
            "out": None if out is None else str(out),
            "out_npz": None if out_npz is None else str(out_npz),
        }
        typer.echo(json.dumps(summary))
        return
    for query in records[:20]:
        source = f"index {query['index']}" if query["index"] is not None else query["image"]
        changed = {
            k: f"{query['factual'][k]}->{v}"
            for k, v in query["counterfactual"].items()
            if v != query["factual"][k]
        }
        typer.echo(f"{source}: {', '.join(f'{k} {v}' for k, v in changed.items()) or 'no change'}")
        spread = query.get("distribution", [])
        for entry in spread[:5] if len(spread) > 1 else []:
            typer.echo(f"  {entry['probability']:7.4f}  {_assignment_text(entry['factors'])}")
    if len(records) > 20:
        typer.echo(f"... and {len(records) - 20} more")
    for path in (out, out_npz):
        if path is not None:
            typer.echo(path)


@app.command("infer")
def infer(
    run: RunArgument,
    index: Annotated[list[int] | None, typer.Option(help="Dataset index (repeatable).")] = None,
    image: Annotated[
        list[Path] | None, typer.Option(help="A 64x64 binary PNG (repeatable).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data file: with --index, where to look the indices up; alone, infer "
            "its first --limit images."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Images of --data to read.")] = 100,
    top: Annotated[int, typer.Option(min=1, help="Candidate factor tuples per image.")] = 5,
    json_out: JsonOption = False,
) -> None:
    """The factors of images read off the pixels: the posterior p(y | x), best first."""
    import time

    from causal_sprites.data.factors import format_classes
    from causal_sprites.scm.queries import load_run

    if (index is not None) + (image is not None) + (data is not None and index is None) != 1:
        raise typer.BadParameter("give exactly one", param_hint="--index, --image or --data")
    model = load_run(run)
    sources: list[dict[str, Any]]
    if image is not None:
        pixels = np.stack([read_binary_png(path) for path in image])
        sources = [{"image": str(path)} for path in image]
    else:
        default = Path(model.config.data) if model.config.data else None
        store = dsprites.DSprites.load(data or default)
        rows = np.asarray(index if index is not None else range(min(limit, len(store))))
        pixels = store.images(rows)
        sources = [{"index": int(k), "true": format_classes(store.factors(int(k)))} for k in rows]
    start = time.perf_counter()
    posterior = model.infer(pixels, top=top)
    seconds = time.perf_counter() - start
    flagged = model.out_of_distribution(posterior)
    records = [
        {
            **source,
            "candidates": [
                {"factors": format_classes(c), "probability": float(p)}
                for c, p in zip(posterior.classes[b], posterior.probabilities[b], strict=True)
                if p > 0
            ],
            "log_likelihood": float(posterior.log_likelihood[b]),
            "out_of_distribution": bool(flagged[b]),
            "num_scored": int(posterior.num_scored[b]),
        }
        for b, source in enumerate(sources)
    ]
    if json_out:
        summary = {"images": records, "likelihood_range": model.likelihood_range}
        typer.echo(json.dumps({**summary, "seconds": seconds}))
        return
    usual = model.likelihood_range
    for record in records[:20]:
        name = record.get("image") or f"index {record['index']}"
        typer.echo(f"{name}: log-likelihood {record['log_likelihood']:.1f} nats")
        if record["out_of_distribution"] and usual is not None:
            typer.echo(
                f"  warning: unlike any dSprites image (threshold {usual['threshold']:.0f}, "
                f"held-out median {usual['median']:.1f}); these factors explain it badly"
            )
        for candidate in record["candidates"]:
            text = _assignment_text(candidate["factors"])
            typer.echo(f"  {candidate['probability']:7.4f}  {text}")
    if len(records) > 20:
        typer.echo(f"... and {len(records) - 20} more")
    if usual is None:
        typer.echo("note: this run records no likelihood range; out-of-distribution is unchecked")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/demo"),
    minutes: Annotated[float, typer.Option(min=0, help="Training minutes.")] = 4.0,
    device: DeviceOption = "auto",
) -> None:
    """The main job end to end on the default data: data, training, evaluation, figures."""
    from causal_sprites.demo import run_demo

    run_demo(out, minutes, device)


@data_app.command("variant")
def data_variant(
    spec: Annotated[Path, typer.Argument(help="Variant spec: a factor-level SCM (YAML or JSON).")],
    out: Annotated[Path, typer.Option("--out", help="The .npz to write.")],
    num_samples: Annotated[
        int | None, typer.Option(min=1, help="Override the spec's num_samples.")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override the spec's seed.")] = None,
) -> None:
    """Sample a causal variant: an official-format .npz plus each sample's noise and the spec."""
    import dataclasses

    from causal_sprites.data.variants import load_spec, sample_variant

    loaded = load_spec(spec)
    if num_samples is not None:
        loaded = dataclasses.replace(loaded, num_samples=num_samples)
    if seed is not None:
        loaded = dataclasses.replace(loaded, seed=seed)
    path = sample_variant(loaded, out)
    edges = loaded.graph_string() or "no edges"
    typer.echo(f"{path}: {loaded.num_samples} samples of {loaded.name} ({edges})")


def _write_discovered_graph(
    run_dir: Path, edges: list[dict], orient: str | None
) -> list[list[str]]:
    """Orient the discovered edges (undirected ones by --orient) and store the DAG in a run."""
    from causal_sprites.config import parse_graph
    from causal_sprites.runs import rewrite_graph

    chosen = set(parse_graph(orient or ""))
    graph = []
    for edge in edges:
        pair = (edge["from"], edge["to"])
        if edge["directed"]:
            graph.append(pair)
        elif pair in chosen or pair[::-1] in chosen:
            graph.append(pair if pair in chosen else pair[::-1])
        else:
            raise CausalSpritesError(
                f"the data cannot orient {pair[0]} -- {pair[1]}; choose a direction with "
                f'--orient "{pair[0]}->{pair[1]}" (or the reverse)'
            )
    rewrite_graph(run_dir, tuple(graph))
    return [list(pair) for pair in graph]


@app.command("discover")
def discover(
    run: Annotated[
        str | None,
        typer.Argument(help="Read the factors off the pixels with this run's posterior p(y | x)."),
    ] = None,
    data: DataOption = None,
    truth: Annotated[
        Path | None, typer.Option(help="Variant spec whose graph to score against (SHD).")
    ] = None,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Test level.")] = 1e-3,
    test: Annotated[str, typer.Option(help="Independence test: chisq or gsq.")] = "chisq",
    num_images: Annotated[
        int, typer.Option(min=50, help="Images to read (with RUN), a seeded subsample.")
    ] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the subsample.")] = 0,
    write_graph: Annotated[
        Path | None, typer.Option(help="Store the discovered DAG in this run directory.")
    ] = None,
    orient: Annotated[
        str | None, typer.Option(help='Directions for undirected edges, e.g. "shape->scale".')
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """PC causal discovery over the factors, from a data file's labels or from the pixels."""
    from causal_sprites.data.variants import load_spec
    from causal_sprites.discovery import discover_file, discover_from_images

    spec = load_spec(truth) if truth is not None else None
    options: dict[str, Any] = {"alpha": alpha, "test": test}
    if run is None:
        result = discover_file(data, spec, **options)
    else:
        model, store = _load(run, data)
        count = min(num_images, len(store))
        rows = np.sort(np.random.default_rng(seed).choice(len(store), count, replace=False))
        result = discover_from_images(model, store.images(rows), spec, seed=seed, **options)
    if write_graph is not None:
        result["written_graph"] = _write_discovered_graph(write_graph, result["edges"], orient)
    if json_out:
        typer.echo(json.dumps(result))
        return
    source = f"factors drawn from {run}'s posterior p(y | x)" if run else "labels"
    typer.echo(
        f"PC ({result['test']}, alpha {result['alpha']:g}) on {result['num_samples']} rows "
        f"({source}), {result['seconds']:.2f} s"
    )
    for edge in result["edges"] or [None]:
        if edge is None:
            typer.echo("  no edges: every factor pair is independent")
        else:
            arrow = "->" if edge["directed"] else "--"
            typer.echo(f"  {edge['from']} {arrow} {edge['to']}")
    for t in result["tests"]:
        pair = f"{t['a']:>11} ~ {t['b']:<11}"
        typer.echo(f"  {pair} p {t['p_value']:<9.3g} V {t['cramers_v']:.3f}")
    if result["shd"] is not None:
        typer.echo(f"  SHD to {truth}: {result['shd']}")
    if any(not e["directed"] for e in result["edges"]):
        typer.echo("  undirected edges: the data cannot orient them; choose a direction yourself")


@app.command("train-oracle")
def train_oracle(
    out: Annotated[Path, typer.Option("--out", help="Directory for oracle.safetensors + .json.")],
    data: DataOption = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps (batches of 64).")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Train the oracle factor classifier on real images (for the soundness metrics)."""
    from causal_sprites.oracle import train_oracle as fit_oracle

    oracle = fit_oracle(dsprites.DSprites.load(data), steps, seed, out, log_every=0)
    if json_out:
        typer.echo(json.dumps({"out": str(out), **oracle.info}))
        return
    scores = ", ".join(f"{k} {v:.3f}" for k, v in oracle.info["accuracy"].items())
    typer.echo(f"{out}: held-out accuracy {scores}")


@app.command("report")
def report(
    run: RunArgument,
    data: DataOption = None,
    out: Annotated[
        Path | None, typer.Option(help="HTML to write (default: RUN/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page with every figure and metric of a run."""
    from causal_sprites.report import write_report

    model, store = _load(run, data)
    typer.echo(write_report(model, store, out))


@app.command("app")
def web_app(
    run: RunArgument,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes the app.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 7860,
    data: DataOption = None,
) -> None:
    """Serve the web UI of a run (needs the `app` extra: pip install 'causal-sprites\\[app]')."""
    try:
        from causal_sprites.app import launch
    except ImportError:
        raise CausalSpritesError(
            "the web UI needs Gradio: pip install 'causal-sprites[app]'"
        ) from None
    launch(run, host, port, data)


def main() -> None:
    """Console-script entry point (`causal-sprites`)."""
    app(prog_name="causal-sprites")
