"""Plotting helpers leave the user's matplotlib backend alone (issue 12, point 3).

A notebook's inline backend (or any backend the user chose) must survive a call to a
library plot: the helpers draw on a ``matplotlib.figure.Figure`` and never import pyplot.
Each case runs in a fresh interpreter that first selects the ``pdf`` backend.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "timing": """
        from scinjax.cli.timing import main
        assert main(["--sizes", "1KiB..1MiB", "--out", OUT]) == 0
        png = OUT + "/timing.png"
    """,
    "e2e": """
        from scinjax.cli.e2e import main
        assert main(["--models", "llama2-7b", "--prefill", "128..256",
                     "--decode-batch", "1..2", "--out", OUT]) == 0
        png = OUT + "/e2e.png"
    """,
    "benchmarks/collectives": """
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import collectives
        rows = [{"bytes_per_rank": s, **{v: 1e-3 * s / 4096 for v in
                 ["plain_f32_sum", *collectives.VARIANTS]}} for s in (4096, 65536)]
        png = OUT + "/collectives.png"
        collectives._plot(rows, png)
    """,
}

PRELUDE = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("pdf")
ROOT = Path({root!r})
OUT = {out!r}
"""

EPILOGUE = """
assert matplotlib.get_backend().lower() == "pdf", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules, "a plotting helper imported pyplot"
with open(png, "rb") as f:
    assert f.read(8) == b"\\x89PNG\\r\\n\\x1a\\n", png
print("backend ok")
"""


@pytest.mark.parametrize("case", list(CASES))
def test_plot_helper_keeps_the_backend(case, tmp_path):
    code = (
        PRELUDE.format(root=str(ROOT), out=str(tmp_path)) + textwrap.dedent(CASES[case]) + EPILOGUE
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "backend ok" in proc.stdout, proc.stderr[-3000:]


LIBRARY_DIRS = ("scinjax", "models", "benchmarks")
BACKEND_SWITCH = re.compile(
    r"matplotlib\.use\(|import\s+matplotlib\.pyplot|from\s+matplotlib\s+import\s+pyplot"
    r"|matplotlib\.pyplot\b|\bplt\.(?:subplots|figure|switch_backend)\("
)


def test_no_library_module_imports_pyplot_or_picks_a_backend():
    """Every plotting helper, also those the cases above do not run (study, train, moe)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in LIBRARY_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if BACKEND_SWITCH.search(line.split("#", 1)[0])
    ]
    assert not offenders, f"library code must draw on matplotlib.figure.Figure: {offenders}"
    assert BACKEND_SWITCH.search('matplotlib.use("Agg")')
    assert BACKEND_SWITCH.search("import matplotlib.pyplot as plt")
