"""Per-link byte ledger: exact integer traffic of every All-Reduce, found by tracing."""

from scinjax.traffic._ledger import TrafficReport, algbw, busbw, count_traffic
from scinjax.traffic._records import TrafficRecord, collective_record
from scinjax.traffic._sg_records import scatter_gather_record

__all__ = [
    "TrafficRecord",
    "TrafficReport",
    "algbw",
    "busbw",
    "collective_record",
    "count_traffic",
    "scatter_gather_record",
]
