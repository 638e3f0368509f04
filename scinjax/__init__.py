"""scinjax: a JAX functional emulator of switch-centric in-network All-Reduce (SCIN).

Bit-exact wire formats (:mod:`scinjax.formats`), every All-Reduce algorithm over a
named axis (:mod:`scinjax.collectives`), the per-link byte ledger
(:mod:`scinjax.traffic`) and a fabric timing model (:mod:`scinjax.timing`).
"""

from scinjax import collectives, formats, traffic
from scinjax.collectives import (
    ALGORITHMS,
    CallPolicy,
    CallRule,
    Collective,
    all_gather,
    allreduce,
    reduce_scatter,
)
from scinjax.formats import (
    CastFormat,
    FpFormat,
    IntFormat,
    QArray,
    dequantize,
    quantize,
    wire_bytes,
)
from scinjax.traffic import TrafficRecord, TrafficReport, algbw, busbw, count_traffic
from scinjax.transforms import emulate, psum

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "CallPolicy",
    "CallRule",
    "CastFormat",
    "Collective",
    "FpFormat",
    "IntFormat",
    "QArray",
    "TrafficRecord",
    "TrafficReport",
    "algbw",
    "all_gather",
    "allreduce",
    "busbw",
    "collectives",
    "count_traffic",
    "dequantize",
    "emulate",
    "formats",
    "psum",
    "quantize",
    "reduce_scatter",
    "traffic",
    "wire_bytes",
]
