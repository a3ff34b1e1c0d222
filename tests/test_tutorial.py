"""The tutorial notebook (docs/tutorial.ipynb) runs from top to bottom in a fresh kernel and prints
what its text promises; its stored outputs are complete and promise the same, so the API's
worked example cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
#: Seconds one cell may take (the whole notebook takes about 35 s on 2 idle cores).
CELL_TIMEOUT = 180
#: Figures the notebook draws.
FIGURES = 6


def code_cells(notebook: NotebookNode) -> list[NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def printed(notebook: NotebookNode) -> str:
    """Everything the code cells printed on stdout, in order."""
    return "".join(
        output.text
        for cell in code_cells(notebook)
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def number(text: str, label: str) -> float:
    """The number printed right after `label`."""
    match = re.search(re.escape(label) + r" (-?[0-9.]+)", text)
    assert match, f"nothing printed after {label!r}"
    return float(match.group(1))


def check_story(text: str) -> None:
    """The values the tutorial's text relies on."""
    assert "737,280 images" in text
    assert "factors [0, 5, 5, 10, 20]" in text
    assert number(text, "reconstruction IoU") >= 0.95
    assert number(text, "edit IoU against the real heart") >= 0.9
    assert "scales drawn given scale = 5: [5, 5, 5, 5, 5, 5]" in text
    assert "P(shape | scale = 5): [0.333, 0.33" in text
    assert "posX drawn under do(posX = 31): [31, 31, 31, 31, 31, 31]" in text
    assert number(text, "counterfactual IoU against the real heart") >= 0.9
    assert "do(the observed shape) returns the input: True" in text
    assert "method: exact\n  [2, 5, 5, 10, 20] with probability 1.00" in text
    assert "square: mode [0, 5, 5, 10, 20], probability 1.00" in text
    assert "small square, orientations read: [0, 10, 29, 39]" in text
    assert "out of distribution: square False | blank True" in text
    assert (
        "factual, read off the pixels: [0, 5, 5, 10, 20]\ncounterfactual: [2, 5, 5, 10, 20]" in text
    )
    assert number(text, "IoU against the real heart") >= 0.9
    assert "refused: image 0 is unlike any dSprites image" in text
    assert "edges from dSprites' labels: []" in text
    assert "edges from the pixels of 200 images: []" in text
    assert "found: ['shape--scale', 'shape--posX']\nSHD to the truth: 0" in text
    assert "trained 10 steps" in text
    assert "squares: factors ['hue', 'left'], images (32, 48, 3), 60 steps" in text
    assert "do(the observed hue) returns the input: True" in text
    names = "['pendulum_angle', 'light_angle', 'shadow_length', 'shadow_position']"
    units = "['degrees', 'degrees', 'world units', 'world units']"
    assert f"pendulum: factors {names}, units {units}" in text
    assert "pendulum_angle drawn under do(pendulum_angle = 12.5): [12.5, 12.5, 12.5, 12.5]" in text
    assert "true shadow_length: [3.85, 5.68, 3.0]\nthe model's: [" in text  # the generator's
    assert number(text, "against the true ones:") >= 15  # 30 steps: crude, but a pendulum
    assert "do(every observed value) returns the input: True" in text


def test_the_stored_outputs_are_complete_and_tell_the_story() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = code_cells(notebook)
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == FIGURES
    check_story(printed(notebook))


@pytest.mark.slow
def test_the_notebook_runs_and_tells_the_story() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    streams = [o for cell in code_cells(notebook) for o in cell.outputs if "name" in o]
    assert not [o.text for o in streams if o.name == "stderr"]  # no warning, no traceback
    check_story(printed(notebook))
