"""Wire formats: block-wise integer codes with scales, and plain casts (spec/formats.md)."""

from scinjax.formats._f32 import exact_div, ftz, to_f32
from scinjax.formats._quant import QArray, dequantize, quantize, wire_bytes
from scinjax.formats._spec import (
    ROUNDINGS,
    SCALE_DTYPES,
    CastFormat,
    Format,
    IntFormat,
    get,
    names,
)

__all__ = [
    "CastFormat",
    "Format",
    "IntFormat",
    "QArray",
    "ROUNDINGS",
    "SCALE_DTYPES",
    "dequantize",
    "exact_div",
    "ftz",
    "get",
    "names",
    "quantize",
    "to_f32",
    "wire_bytes",
]
