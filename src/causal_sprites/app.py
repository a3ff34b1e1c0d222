"""The web UI (Gradio): pick a sprite, intervene on its factors and see the counterfactual
(abduction, action, prediction; Pearl 2009, ch. 7) beside the original, the reconstruction and their
difference, with tabs for intervention samples and the conditional posterior."""

from __future__ import annotations

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
    DISTRIBUTION_SAMPLES,
    candidates_text,
    distribution_text,
    factor_table,
    value_choices,
    value_text,
)
from causal_sprites.data.dsprites import DSprites
from causal_sprites.data.factors import (
    FACTORS,
    NUM_IMAGES,
    SHAPE_NAMES,
    SIZES,
    index_to_classes,
    parse_factor_value,
)
from causal_sprites.data.pictures import binary_pixels
from causal_sprites.data.render import render
from causal_sprites.errors import CausalSpritesError
from causal_sprites.model.readout import DRAW_TOP
from causal_sprites.scm.batch import Question, answer
from causal_sprites.scm.queries import CausalModel, load_run
from causal_sprites.viz import difference_map, query_samples_figure

HOST = "127.0.0.1"
PORT = 7860
SOURCES = ("factors", "dataset index", "upload")
#: Dropdown entry for "no intervention on this factor" and "no evidence on this factor".
KEEP = "keep"
ANY = "any"
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
#: Sprites are 64x64 PNGs scaled up in the page with square pixels, not smoothed.
CSS = ".sprite img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
UPLOAD_HELP = (
    "A 64x64 black-and-white PNG (pixels 0/255 or 0/1); its factors are read off the pixels by the "
    "model's posterior p(y | x). Other sizes or gray levels are refused, not resized; an image no "
    "sprite explains is refused too."
)


def binary_upload(pixels: np.ndarray) -> np.ndarray:
    """An uploaded picture (H, W) or (H, W, C) -> (64, 64) uint8 0/1, or a refusal that says why."""
    return binary_pixels(pixels, "the upload")


def figure_array(fig: Figure) -> np.ndarray:
    """A matplotlib figure rendered to RGB pixels (H, W, 3) uint8."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class Explorer:
    """The app's handlers over one CausalModel; a lock serialises queries (the model keeps a memo
    of decoder outputs while it answers one)."""

    def __init__(self, model: CausalModel, data: DSprites | None = None) -> None:
        self.model = model
        self.data = data
        self.lock = threading.Lock()

    @property
    def num_images(self) -> int:
        """Images reachable by index: the data's rows, or the full official grid."""
        return NUM_IMAGES if self.data is None else len(self.data)

    def sprite(self, classes: np.ndarray) -> np.ndarray:
        """The dSprites image (64, 64) of a class tuple (5,): the data's, else the generator's."""
        if self.data is None:
            return render(classes[None])[0]
        row = self.data.index(**dict(zip(FACTORS, (int(c) for c in classes), strict=True)))
        return self.data.images([row])[0]

    def choose(
        self, source: str, factors: list[Any], index: Any, upload: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The chosen image (64, 64) and its labels (5,), or None when the classifier must say."""
        if source == "factors":
            classes = np.array(
                [parse_factor_value(n, v) for n, v in zip(FACTORS, factors, strict=True)]
            )
            return self.sprite(classes), classes
        if source == "dataset index":
            if index is None or not 0 <= int(index) < self.num_images:
                raise CausalSpritesError(f"the index must lie in 0..{self.num_images - 1}")
            row = int(index)
            if self.data is None:
                classes = index_to_classes(row, with_color=False)
                return render(classes[None])[0], classes
            return self.data.images([row])[0], self.data.factors([row])[0]
        if source == "upload":
            if upload is None:
                raise CausalSpritesError("upload a PNG first")
            return binary_upload(upload), None
        raise CausalSpritesError(f"unknown image source {source!r}")

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
        do = {
            name: parse_factor_value(name, value)
            for name, value in zip(FACTORS, actions, strict=True)
            if value not in (None, KEEP)
        }
        return Question(image, labels, do)

    def read_uploads(self, queries: dict[int, Question], status: list[str]) -> None:
        """Read the factors of the questions without labels off their pixels, once: each keeps
        its posterior; those no sprite explains are dropped from `queries` with their one-line
        refusal in `status`."""
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

    def counterfactuals(
        self,
        source: list[str],
        shape: list[str],
        scale: list[float],
        orientation: list[float],
        posX: list[float],
        posY: list[float],
        index: list[float | None],
        upload: list[np.ndarray | None],
        do_shape: list[str],
        do_scale: list[str],
        do_orientation: list[str],
        do_posX: list[str],
        do_posY: list[str],
    ) -> tuple[list[Any], ...]:
        """Batched handler (Gradio passes one list per input, an entry per request): returns lists
        of original, reconstruction, counterfactual, difference map, pixel-probability map, factor
        table, latency and status. Requests are grouped by intervened factors and label source,
        and each group is one `counterfactual_query` (the CLI's call, with its default seed)."""
        start = time.perf_counter()
        count = len(source)
        out: list[list[Any]] = [[None] * count for _ in range(5)] + [[""] * count for _ in range(3)]
        queries: dict[int, Question] = {}
        factors = list(zip(shape, scale, orientation, posX, posY, strict=True))
        actions = list(zip(do_shape, do_scale, do_orientation, do_posX, do_posY, strict=True))
        for k in range(count):
            try:
                queries[k] = self.query(
                    source[k], list(factors[k]), index[k], upload[k], list(actions[k])
                )
            except CausalSpritesError as error:
                out[7][k] = f"**Not answered:** {error}"
        with self.lock:
            self.read_uploads(queries, out[7])
            keys = list(queries)
            try:
                answers = answer(self.model, [queries[k] for k in keys], SEED, DISTRIBUTION_SAMPLES)
            except CausalSpritesError as error:
                for k in keys:
                    out[7][k] = f"**Not answered:** {error}"
                return tuple(out)
            if not keys:
                return tuple(out)
            recon = self.model.reconstruct(
                np.stack([queries[k].image for k in keys]), answers.factual
            )
        for j, k in enumerate(keys):
            image, cf = queries[k].image, answers.images[j]
            classes, probabilities, _, pixel_probs, method = answers.distributions[j]
            out[0][k], out[1][k], out[2][k] = image * 255, recon[j] * 255, cf * 255
            out[3][k] = (difference_map(image, cf) * 255).astype(np.uint8)
            out[4][k] = (pixel_probs * 255).round().astype(np.uint8)
            given = bool(answers.given[j])
            out[5][k] = factor_table(answers.factual[j], answers.counterfactual[j], given)
            read = queries[k].posterior
            if read is not None:
                usual = self.model.likelihood_range
                out[5][k] += "\n\n" + candidates_text(read, TOP_CANDIDATES, usual)
            if len(probabilities) > 1:
                out[5][k] += "\n\n" + distribution_text(classes, probabilities, method)
            out[6][k] = (
                f"Counterfactual query: **{answers.seconds * 1e3:.0f} ms** "
                f"(a batch of {answers.batch_size[j]}, seed {SEED})"
            )
        elapsed = time.perf_counter() - start
        for k in queries:
            out[6][k] += f"; request handled in {elapsed * 1e3:.0f} ms."
        return tuple(out)

    def intervention_samples(self, *inputs: Any) -> tuple[np.ndarray | None, str]:
        """Samples of p(x | do(...)) with the mutilated network's marginals, as one figure."""
        *values, num = inputs
        do = {
            n: parse_factor_value(n, v) for n, v in zip(FACTORS, values, strict=True) if v != KEEP
        }
        if not do:
            return None, "Choose a value for at least one factor."
        with self.lock:
            result = self.model.intervene_query(do, int(num), seed=SEED)
        title = "p(x | do(" + ", ".join(f"{n}={value_text(n, v)}" for n, v in do.items()) + "))"
        fig = query_samples_figure(
            result.images, result.classes, result.marginals, title, self.model.schema
        )
        return figure_array(fig), f"Query: {result.seconds * 1e3:.0f} ms"

    def conditional_samples(self, *inputs: Any) -> tuple[np.ndarray | None, str]:
        """The exact posterior over factors given evidence, with images sampled from it."""
        *values, num = inputs
        given = {
            n: parse_factor_value(n, v) for n, v in zip(FACTORS, values, strict=True) if v != ANY
        }
        try:
            with self.lock:
                result = self.model.condition_query(given, int(num), seed=SEED)
        except CausalSpritesError as error:
            return None, f"**Not answered:** {error}"
        evidence = ", ".join(f"{n}={value_text(n, v)}" for n, v in given.items())
        title = f"p(x | {evidence})" if given else "p(x)"
        fig = query_samples_figure(
            result.images, result.classes, result.marginals, title, self.model.schema
        )
        return figure_array(fig), f"Query: {result.seconds * 1e3:.0f} ms"


def _sprite_image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(
        label=label,
        elem_id=elem_id,
        elem_classes="sprite",
        format="png",
        height=IMAGE_PX,
        width=IMAGE_PX,
        interactive=False,
        buttons=["download", "fullscreen"],
    )


def build_app(model: CausalModel, data: DSprites | None = None) -> gr.Blocks:
    """The UI over a model. Images come from `data` when given, else from the generator (the
    default data's own pixels); uploads are arrays, never file-system paths."""
    explorer = Explorer(model, data)
    name = model.run_dir.name if model.run_dir is not None else "model"
    with gr.Blocks(
        title="causal-sprites", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as app:
        gr.Markdown(f"# causal-sprites: counterfactual explorer\nRun: `{name}`")
        with gr.Tab("Counterfactual"), gr.Row():
            with gr.Column(scale=1):
                source = gr.Radio(list(SOURCES), value="factors", label="Image", elem_id="source")
                controls: list[gr.components.Component] = [
                    gr.Dropdown(list(SHAPE_NAMES), value="square", label="shape", elem_id="f-shape")
                ]
                defaults = {"scale": 5, "orientation": 0, "posX": 16, "posY": 16}
                for factor, value in defaults.items():
                    top = SIZES[FACTORS.index(factor)] - 1
                    controls.append(
                        gr.Slider(
                            0,
                            top,
                            value=value,
                            step=1,
                            precision=0,
                            label=factor,
                            elem_id=f"f-{factor}",
                        )
                    )
                index = gr.Number(
                    value=0,
                    precision=0,
                    minimum=0,
                    maximum=explorer.num_images - 1,
                    label=f"dataset index (0..{explorer.num_images - 1})",
                    elem_id="index",
                )
                upload = gr.Image(
                    type="numpy",
                    image_mode="L",
                    sources=["upload"],
                    format="png",
                    label="upload",
                    elem_id="upload",
                    elem_classes="sprite",
                    height=IMAGE_PX,
                )
                gr.Markdown(UPLOAD_HELP)
            with gr.Column(scale=1):
                gr.Markdown("### Interventions\n`keep` leaves a factor to its mechanism.")
                actions = [
                    gr.Dropdown(
                        [KEEP, *value_choices(f)], value=KEEP, label=f"do({f})", elem_id=f"do-{f}"
                    )
                    for f in FACTORS
                ]
                run = gr.Button("Counterfactual", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                shown = []
                for pair in (ORIGINALS, COUNTERFACTUALS):
                    with gr.Row():
                        shown += [_sprite_image(label, elem_id) for elem_id, label in pair]
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
            explorer.counterfactuals,
            [source, *controls, index, upload, *actions],
            [*shown, table, latency, status],
            api_name="counterfactual",
            batch=True,
            max_batch_size=MAX_BATCH,
            concurrency_limit=1,
        )
        _sampling_tab(
            "Intervention samples", KEEP, "do({})", "p(x | do(...))", explorer.intervention_samples,
            "intervene",
        )  # fmt: skip
        _sampling_tab(
            "Conditional posterior", ANY, "{}", "p(x | evidence)", explorer.conditional_samples,
            "condition",
        )  # fmt: skip
    return app


def _sampling_tab(
    title: str,
    unset: str,
    label: str,
    query: str,
    sample: Callable[..., tuple[np.ndarray | None, str]],
    api_name: str,
) -> None:
    """A tab of samples: a dropdown per factor (`unset` leaves it out; `label` formats its name),
    a sample count and a button that shows `sample`'s figure of `query` and its note."""
    with gr.Tab(title):
        with gr.Row():
            values = [
                gr.Dropdown([unset, *value_choices(f)], value=unset, label=label.format(f))
                for f in FACTORS
            ]
        count = gr.Slider(4, 64, value=16, step=1, label="samples")
        run = gr.Button("Sample", variant="primary")
        figure = gr.Image(label=query, format="png", interactive=False)
        note = gr.Markdown()
        run.click(sample, [*values, count], [figure, note], api_name=api_name)


def serve(
    model: CausalModel, host: str = HOST, port: int = PORT, data: DSprites | None = None
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
    index come from `data`, else the run's data file, else the generator."""
    model = load_run(run)
    path = data if data is not None else model.config.data
    app, url = serve(model, host, port, DSprites.load(path) if path is not None else None)
    print(f"causal-sprites app: {url} (Ctrl+C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {host}, so other machines that reach it can use the app", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
