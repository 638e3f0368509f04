"""Drop-ins for research code: ``psum`` and the ``emulate`` transform."""

from scinjax.transforms import _sp_rules  # noqa: F401  (registers RS/AG rewrites)
from scinjax.transforms._emulate import CallSite, emulate, register_rewrite
from scinjax.transforms._psum import as_replicated, psum

__all__ = ["CallSite", "as_replicated", "emulate", "psum", "register_rewrite"]
