"""No link leaves the repository or points at a missing file (issue 12, point 4).

Scans the repository's markdown, notebooks and Python files (those git tracks or would
track): no path into the team's ``shared/`` folder, every relative markdown link and
image resolves, and every ``spec/<name>.md`` / ``reference/<name>.md`` named in text or
code is a page of ``docs/spec/`` / ``docs/reference/``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# spelled in two pieces so that this file does not match itself
SHARED = re.compile(r"(\.\./)?" + "shared" + r"/(spec|reference|design\.md|hooks)")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
PAGE = re.compile(r"(?<![\w/.])(?:docs/)?(spec|reference)/([\w.-]+\.md)")


def _repo_files(*suffixes: str) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        names = [n for n in out if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if ".venv" not in p.parts]
    return sorted(ROOT / n for n in names if n.endswith(suffixes) and (ROOT / n).is_file())


def _markdown_texts(path: Path) -> list[str]:
    """The markdown of a ``.md`` file, or of each markdown cell of a notebook."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    return [path.read_text(encoding="utf-8")]


def _links(markdown: str) -> list[str]:
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return MD_LINK.findall(prose) + HTML_SRC.findall(prose)


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("#")


def _param(path: Path):
    return pytest.param(path, id=str(path.relative_to(ROOT)))


TEXT_FILES = _repo_files(".md", ".ipynb", ".py", ".toml", ".txt", ".cfg", ".json")
MARKDOWN_FILES = _repo_files(".md", ".ipynb")


def test_the_scan_sees_the_repository():
    names = {str(p.relative_to(ROOT)) for p in TEXT_FILES}
    assert {"docs/api.md", "docs/spec/formats.md", "tests/test_links.py"} <= names
    assert any(n.endswith(".ipynb") for n in names)


@pytest.mark.parametrize("path", [_param(p) for p in TEXT_FILES])
def test_no_path_into_the_shared_folder(path):
    text = path.read_text(encoding="utf-8")
    hits = [m.group(0) for m in SHARED.finditer(text)]
    assert not hits, f"{path.relative_to(ROOT)} points outside the repository: {hits}"


@pytest.mark.parametrize("path", [_param(p) for p in MARKDOWN_FILES])
def test_relative_links_resolve(path):
    missing = []
    for markdown in _markdown_texts(path):
        for target in _links(markdown):
            if _is_external(target):
                continue
            local = target.split("#", 1)[0]
            if local and not (path.parent / local).exists():
                missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("path", [_param(p) for p in TEXT_FILES])
def test_named_spec_pages_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = sorted(
        f"{kind}/{name}"
        for kind, name in PAGE.findall(text)
        if not (ROOT / "docs" / kind / name).is_file()
    )
    assert not missing, f"{path.relative_to(ROOT)} names pages docs/ lacks: {missing}"


def test_link_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text(
        "[ok](there.md#a) [web](https://example.org) [gone](missing.md) ![img](fig.png)\n"
        "`[code](not-a-link.md)`\n```\n[fenced](nope.md)\n```\n"
    )
    found = [t for t in _links(page.read_text()) if not _is_external(t)]
    assert found == ["there.md#a", "missing.md", "fig.png"]
    assert SHARED.search("see ../" + "shared" + "/spec/formats.md")
    assert PAGE.findall("as spec/formats.md says; docs/reference/published-figures.md") == [
        ("spec", "formats.md"),
        ("reference", "published-figures.md"),
    ]
