"""The web UI (Gradio): pick an image (a sprite, or any run's data), intervene on its factors and
see the counterfactual (abduction, action, prediction; Pearl 2009, ch. 7) beside the original, the
reconstruction and their difference, with tabs for intervention samples and the conditional
posterior. Menus and tables follow the run's factor schema."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from causal_sprites.app_text import (
    ANY,
    DISTRIBUTION_SAMPLES,
    KEEP,
    Requests,
    binary_upload,
    candidates_text,
    distribution_text,
    factor_label,
    factor_table,
    sampling_help,
    upload_help,
    value_choices,
    value_text,
)
from causal_sprites.data.dataset import Dataset
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.schema import Factor, Schema
from causal_sprites.errors import CausalSpritesError
from causal_sprites.figures import bounds, classes_are_indices, start_values
from causal_sprites.model.readout import DRAW_TOP
from causal_sprites.scm.batch import Question, answer
from causal_sprites.scm.factor_sampling import evidence_text, parse_evidence
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.viz import difference_map, query_samples_figure

__all__ = ["Explorer", "binary_upload", "build_app", "launch", "serve"]
HOST = "127.0.0.1"
PORT = 7860
SOURCES = ("factors", "dataset index", "upload")
#: The CLI's default seed: a request served alone reproduces `causal-sprites counterfactual`.
SEED = 0
#: Factor tuples of an upload's posterior shown beside its counterfactual.
TOP_CANDIDATES = 3
#: Concurrent counterfactual requests answered by one batched query.
MAX_BATCH = 64
#: Seconds an upload's factors are searched before no wider search starts (the user waits).
UPLOAD_SEARCH_SECONDS = 20.0
IMAGE_PX = 192
ORIGINALS = (("original", "original"), ("reconstruction", "reconstruction"))
COUNTERFACTUALS = (
    ("counterfactual", "counterfactual"),
    ("difference", "difference (red removed, green added)"),
    ("pixel-probability", "P(pixel on) over the counterfactual's distribution"),
)
#: Images are PNGs scaled up in the page with square pixels, not smoothed.
CSS = ".sprite img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
#: Steps a continuous factor's slider has over its range (rounded to a power of ten).
SLIDER_STEPS = 100


def figure_array(fig: Figure) -> np.ndarray:
    """A matplotlib figure rendered to RGB pixels (H, W, 3) uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class Explorer(Requests):
    """The app's handlers over one CausalModel and its data (dSprites' may be None: the
    generator draws any factor tuple); a lock serialises queries (the model keeps a memo of
    decoder outputs while it answers one). Factors, values and images follow the run's schema
    (`Requests`)."""

    def __init__(self, model: CausalModel, data: DSprites | Dataset | None = None) -> None:
        super().__init__(model.schema, data)
        self.model = model
        self.lock = threading.Lock()

    def query(
        self,
        source: str,
        factors: list[Any],
        index: Any,
        upload: np.ndarray | None,
        actions: list[str | None],
    ) -> Question:
        """Parse one request: the image, its labels and the interventions ("keep" or a value)."""
        image, labels = self.choose(source, factors, index, upload)
        return Question(image, labels, self.parse(actions, KEEP))

    def read_uploads(self, queries: dict[int, Question], status: list[str]) -> None:
        """Read the factors of the questions without labels off their pixels, once: each keeps
        its posterior; those no factor tuple explains are dropped from `queries` with their
        one-line refusal in `status`."""
        unread = [k for k, q in queries.items() if q.labels is None]
        if not unread:
            return
        budget = replace(self.model.search_budget, max_seconds=UPLOAD_SEARCH_SECONDS)
        images = np.stack([queries[k].image for k in unread])
        posterior = self.model.infer(images, top=DRAW_TOP, budget=budget)
        for row, k in enumerate(unread):
            refusal = self.model.unexplained(posterior, row)
            if refusal is None:
                queries[k] = replace(queries[k], posterior=posterior.rows([row]))
            else:
                status[k] = f"**Not answered:** {refusal}"
                del queries[k]

    def counterfactuals(self, **columns: list[Any]) -> tuple[list[Any], ...]:
        """`counterfactuals_any` with its columns named: `source`, one per factor by its name,
        `index`, `upload` and `do_<factor>` per factor."""
        names = self.schema.names
        return self.counterfactuals_any(
            columns["source"], *(columns[n] for n in names), columns["index"], columns["upload"],
            *(columns[f"do_{n}"] for n in names),
        )  # fmt: skip

    def counterfactuals_any(self, *columns: list[Any]) -> tuple[list[Any], ...]:
        """The batched handler, as Gradio calls it: the columns source, one per factor, index,
        upload, one do() per factor (see `answer_batch`)."""
        count = len(self.schema.names)
        factors = [list(row) for row in zip(*columns[1 : 1 + count], strict=True)]
        actions = [list(row) for row in zip(*columns[3 + count :], strict=True)]
        return self.answer_batch(
            columns[0], factors, columns[1 + count], columns[2 + count], actions
        )

    def answer_batch(
        self,
        source: list[str],
        factors: list[list[Any]],
        index: list[Any],
        upload: list[np.ndarray | None],
        actions: list[list[Any]],
    ) -> tuple[list[Any], ...]:
        """Batched handler (Gradio passes one list per input, an entry per request): returns lists
        of original, reconstruction, counterfactual, difference map, pixel-probability map
        (dSprites' binary model only), factor table, latency and status. Requests are grouped by
        intervened factors and label source, and each group is one `counterfactual_query` (the
        CLI's call, with its default seed)."""
        start = time.perf_counter()
        count = len(source)
        out: list[list[Any]] = [[None] * count for _ in range(5)] + [[""] * count for _ in range(3)]
        queries: dict[int, Question] = {}
        for k in range(count):
            try:
                queries[k] = self.query(source[k], factors[k], index[k], upload[k], actions[k])
            except CausalSpritesError as error:
                out[7][k] = f"**Not answered:** {error}"
        spread = DISTRIBUTION_SAMPLES if self.model.model.likelihood is None else None
        with self.lock:
            self.read_uploads(queries, out[7])
            keys = list(queries)
            if not keys:  # every request refused: nothing to ask the model
                return tuple(out)
            try:
                answers = answer(self.model, [queries[k] for k in keys], SEED, spread)
            except CausalSpritesError as error:
                for k in keys:
                    out[7][k] = f"**Not answered:** {error}"
                return tuple(out)
            recon = self.model.reconstruct(
                np.stack([queries[k].image for k in keys]), answers.factual
            )
        for j, k in enumerate(keys):
            image, cf = queries[k].image, answers.images[j]
            out[0][k], out[1][k] = self.display(image), self.display(recon[j])
            out[2][k] = self.display(cf)
            out[3][k] = (difference_map(image, cf) * 255).astype(np.uint8)
            given = bool(answers.given[j])
            out[5][k] = factor_table(
                answers.factual[j], answers.counterfactual[j], given, self.schema
            )
            read = queries[k].posterior
            if read is not None:
                usual = self.model.likelihood_range
                out[5][k] += "\n\n" + candidates_text(read, TOP_CANDIDATES, usual, self.schema)
            if j in answers.distributions:
                classes, probabilities, _, pixel_probs, method = answers.distributions[j]
                out[4][k] = (pixel_probs * 255).round().astype(np.uint8)
                if len(probabilities) > 1:
                    text = distribution_text(classes, probabilities, method, self.schema)
                    out[5][k] += "\n\n" + text
            out[6][k] = (
                f"Counterfactual query: **{answers.seconds * 1e3:.0f} ms** "
                f"(a batch of {answers.batch_size[j]}, seed {SEED})"
            )
        elapsed = time.perf_counter() - start
        for k in queries:
            out[6][k] += f"; request handled in {elapsed * 1e3:.0f} ms."
        return tuple(out)

    def title(self, values: dict[str, int | float]) -> str:
        """`shape=heart (2), scale=5`: the factor values of a query's title."""
        return ", ".join(f"{n}={value_text(n, v, self.schema)}" for n, v in values.items())

    def intervention_samples(self, *inputs: Any) -> tuple[np.ndarray | None, str]:
        """Samples of p(x | do(...)) with the mutilated network's marginals, as one figure."""
        *values, num = inputs
        try:
            do = self.parse(values, KEEP)
            if not do:
                return None, "Choose a value for at least one factor."
            with self.lock:
                result = self.model.intervene_query(do, int(num), seed=SEED)
        except CausalSpritesError as error:
            return None, f"**Not answered:** {error}"
        fig = query_samples_figure(
            result.images, result.classes, result.marginals, f"p(x | do({self.title(do)}))",
            self.schema, result.continuous,
        )  # fmt: skip
        return figure_array(fig), f"Query: {result.seconds * 1e3:.0f} ms"

    def conditional_samples(self, *inputs: Any) -> tuple[np.ndarray | None, str]:
        """The posterior over factors given evidence (a class; a continuous value, held within
        TOLERANCE of its range, or a range `low..high`), with images sampled from it."""
        *values, num = inputs
        items = [
            f"{name}={value}"
            for name, value in zip(self.schema.names, values, strict=True)
            if value not in (None, ANY)
        ]
        try:
            given = parse_evidence(self.schema, items)
            with self.lock:
                result = self.model.condition_query(given, int(num), seed=SEED)
        except CausalSpritesError as error:
            return None, f"**Not answered:** {error}"
        title = f"p(x | {evidence_text(given, self.schema)})" if given else "p(x)"
        fig = query_samples_figure(
            result.images, result.classes, result.marginals, title, self.schema,
            result.continuous,
        )  # fmt: skip
        return figure_array(fig), f"Query: {result.seconds * 1e3:.0f} ms"


def _sprite_image(label: str, elem_id: str, visible: bool = True) -> gr.Image:
    return gr.Image(
        label=label,
        elem_id=elem_id,
        elem_classes="sprite",
        format="png",
        height=IMAGE_PX,
        width=IMAGE_PX,
        interactive=False,
        buttons=["download", "fullscreen"],
        visible=visible,
    )


def slider_step(factor: Factor) -> float:
    """A continuous factor's slider step: about 1/SLIDER_STEPS of its range, a power of ten."""
    low, high = bounds(factor)
    return float(10 ** math.floor(math.log10((high - low) / SLIDER_STEPS)))


def factor_control(factor: Factor, value: float) -> gr.components.Component:
    """The control of one factor of the chosen image, set to `value`: a menu of class names, a
    slider over class indices where the classes are their indices (dSprites' scale and pose),
    or a slider over a continuous factor's range with its unit in the label."""
    label, elem_id = factor_label(factor), f"f-{factor.name}"
    if factor.kind == "continuous":
        low, high = bounds(factor)
        step = slider_step(factor)
        return gr.Slider(low, high, value=value, step=step, label=label, elem_id=elem_id)
    if not classes_are_indices(factor):
        return gr.Dropdown(list(factor.classes), value=factor.classes[int(value)], label=label,
                           elem_id=elem_id)  # fmt: skip
    return gr.Slider(0, factor.size - 1, value=int(value), step=1, precision=0, label=label,
                     elem_id=elem_id)  # fmt: skip


def value_menu(
    factor: Factor, unset: str, template: str, schema: Schema, elem_id: str | None = None
) -> gr.Dropdown:
    """A menu of a factor's values for a query, `unset` first (the factor left out); a
    continuous factor's menu takes any typed value too (the schema checks its range)."""
    return gr.Dropdown(
        [unset, *value_choices(factor.name, schema)],
        value=unset,
        label=factor_label(factor, template),
        allow_custom_value=factor.kind == "continuous",
        elem_id=elem_id,
    )


def build_app(model: CausalModel, data: DSprites | Dataset | None = None) -> gr.Blocks:
    """The UI over a model, its menus and tables from the run's schema. Images come from `data`
    when given, else (dSprites) from the generator (the default data's own pixels); uploads are
    arrays, never file-system paths."""
    explorer = Explorer(model, data)
    schema, binary_model = model.schema, model.model.likelihood is None
    name = model.run_dir.name if model.run_dir is not None else "model"
    difference = "difference" + ("" if schema.binary else " (change in red)")
    with gr.Blocks(
        title="causal-sprites", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as app:
        gr.Markdown(f"# causal-sprites: counterfactual explorer\nRun: `{name}`")
        with gr.Tab("Counterfactual"), gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(list(SOURCES), value="factors", label="Image", elem_id="source")
                start = start_values(schema, data)
                controls = [factor_control(f, start[f.name]) for f in schema.factors]
                index = gr.Number(
                    value=0,
                    precision=0,
                    minimum=0,
                    maximum=explorer.num_images - 1,
                    label=f"dataset index (0..{explorer.num_images - 1})",
                    elem_id="index",
                )
                upload = gr.Image(
                    type="pil",  # as uploaded: `upload_pixels` converts only what keeps it
                    image_mode=None,
                    sources=["upload"],
                    format="png",
                    label="upload",
                    elem_id="upload",
                    elem_classes="sprite",
                    height=IMAGE_PX,
                )
                gr.Markdown(upload_help(schema))
            with gr.Column(scale=1):
                gr.Markdown("### Interventions\n`keep` leaves a factor to its mechanism.")
                actions = [
                    value_menu(f, KEEP, "do({})", schema, elem_id=f"do-{f.name}")
                    for f in schema.factors
                ]
                run = gr.Button("Counterfactual", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                shown = []
                with gr.Row():
                    shown += [_sprite_image(label, elem_id) for elem_id, label in ORIGINALS]
                with gr.Row():
                    (cf, cf_label), (diff, diff_label), (pp, pp_label) = COUNTERFACTUALS
                    shown.append(_sprite_image(cf_label, cf))
                    shown.append(_sprite_image(diff_label if schema.binary else difference, diff))
                    shown.append(_sprite_image(pp_label, pp, visible=binary_model))
                status = gr.Markdown(elem_id="status")
                table = gr.Markdown(elem_id="factors")
                latency = gr.Markdown(elem_id="latency")
        upload.upload(
            lambda: "upload",
            None,
            source,
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
        run.click(
            explorer.counterfactuals_any,
            [source, *controls, index, upload, *actions],
            [*shown, table, latency, status],
            api_name="counterfactual",
            batch=True,
            max_batch_size=MAX_BATCH,
            concurrency_limit=1,
        )
        _sampling_tab(
            "Intervention samples", KEEP, "do({})", "p(x | do(...))", explorer.intervention_samples,
            "intervene", schema,
        )  # fmt: skip
        _sampling_tab(
            "Conditional posterior", ANY, "{}", "p(x | evidence)", explorer.conditional_samples,
            "condition", schema,
        )  # fmt: skip
    return app


def _sampling_tab(
    title: str,
    unset: str,
    label: str,
    query: str,
    sample: Callable[..., tuple[np.ndarray | None, str]],
    api_name: str,
    schema: Schema,
) -> None:
    """A tab of samples: a dropdown per factor (`unset` leaves it out; `label` formats its name),
    a sample count and a button that shows `sample`'s figure of `query` and its note."""
    with gr.Tab(title):
        gr.Markdown(sampling_help(schema, unset))
        with gr.Row():
            values = [value_menu(f, unset, label, schema) for f in schema.factors]
        count = gr.Slider(4, 64, value=16, step=1, label="samples")
        run = gr.Button("Sample", variant="primary")
        figure = gr.Image(label=query, format="png", interactive=False)
        note = gr.Markdown()
        run.click(sample, [*values, count], [figure, note], api_name=api_name)


def serve(
    model: CausalModel, host: str = HOST, port: int = PORT, data: DSprites | Dataset | None = None
) -> tuple[gr.Blocks, str]:
    """Start the app without blocking (threads); returns it and its URL; `app.close()` stops it.
    Never a public share link."""
    app = build_app(model, data)
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        css=CSS,
    )
    return app, url


def launch(
    run: str | Path, host: str = HOST, port: int = PORT, data: Path | str | None = None
) -> None:
    """Load a run (`pretrained` or a directory) and serve its app until interrupted. Images by
    index come from `data`, else the run's data file, else (dSprites) the generator; data of
    another schema than the run's is refused."""
    from causal_sprites.cli.common import run_data  # the CLI's check of a run's data

    model = load_run(run)
    path = data if data is not None else model.config.data
    store = run_data(model, str(run), Path(path)) if path is not None else None
    app, url = serve(model, host, port, store)
    print(f"causal-sprites app: {url} (Ctrl+C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {host}, so other machines that reach it can use the app", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
