"""Wire formats: block-wise integer and minifloat codes with scales, and plain casts.

spec/formats.md defines them bit for bit.
"""

from scinjax.formats._f32 import exact_div, ftz, to_f32
from scinjax.formats._quant import QArray, dequantize, quantize, wire_bytes
from scinjax.formats._runs import roundtrip_runs
from scinjax.formats._spec import (
    FP_ELEMENTS,
    FP_ROUNDINGS,
    FP_SCALES,
    ROUNDINGS,
    SCALE_DTYPES,
    CastFormat,
    Format,
    FpFormat,
    IntFormat,
    get,
    names,
)

__all__ = [
    "CastFormat",
    "FP_ELEMENTS",
    "FP_ROUNDINGS",
    "FP_SCALES",
    "Format",
    "FpFormat",
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
    "roundtrip_runs",
    "to_f32",
    "wire_bytes",
]
