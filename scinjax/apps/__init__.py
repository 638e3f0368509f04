"""Applications built on scinjax and its models: study, sweep, eval, traffic, timing, e2e.

Each app is a module (or package) of plain functions that the CLI (:mod:`scinjax.cli`)
calls after parsing arguments; notebooks may call them directly.
"""
