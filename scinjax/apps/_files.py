"""The result files every app writes: ``STEM.json``, ``STEM.csv`` and ``STEM.txt``."""

from __future__ import annotations

import csv
import json
import os

__all__ = ["write_result_files"]


def write_result_files(
    out_dir, stem: str, *, doc: dict, rows: list[dict], text: str, indent: int = 2, default=None
) -> dict[str, str]:
    """Write ``doc`` as JSON, ``rows`` as CSV (columns: every key, in first-seen order) and
    ``text`` (the printed table); returns ``{"json", "csv", "txt"}`` paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("json", "csv", "txt")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=indent, default=default)
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    with open(paths["txt"], "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return paths
