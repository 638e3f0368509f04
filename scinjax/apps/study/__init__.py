"""The accuracy study: how much accuracy in-network quantization costs, per byte on the wire.

Modules: :mod:`.corpus` (texts, scoring windows), :mod:`.metrics` (per-token
metrics), :mod:`.stats` (streaming accumulators with standard errors),
:mod:`.variants` (what is compared), :mod:`.runner` (``run_study``),
:mod:`.output` (table/JSON/CSV), :mod:`.plots` (PNG).
"""

from .attribution import attribute, exact_sites, plot_attribution
from .corpus import (
    Corpus,
    ScoringWindows,
    default_corpus,
    pydoc_prose,
    read_jsonl,
    read_text_file,
    scoring_windows,
)
from .output import format_percentiles, format_table, seed_spread, write_results
from .plots import plot_results
from .runner import DEFAULT_VARIANTS, run_study, versions, wire_traffic
from .stats import PERCENTILES, VariantStats, WindowSums, batch_means_se
from .variants import REFERENCE, VARIANT_SETS, Variant, parse_variants

__all__ = [
    "DEFAULT_VARIANTS",
    "PERCENTILES",
    "REFERENCE",
    "VARIANT_SETS",
    "Corpus",
    "ScoringWindows",
    "Variant",
    "VariantStats",
    "WindowSums",
    "attribute",
    "batch_means_se",
    "default_corpus",
    "exact_sites",
    "format_percentiles",
    "format_table",
    "parse_variants",
    "plot_attribution",
    "plot_results",
    "pydoc_prose",
    "read_jsonl",
    "read_text_file",
    "run_study",
    "scoring_windows",
    "seed_spread",
    "versions",
    "wire_traffic",
    "write_results",
]
