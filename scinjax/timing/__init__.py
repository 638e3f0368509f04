"""Fabric timing model: All-Reduce latency from the traffic ledger (docs/timing.md).

``allreduce_time(algorithm, message_bytes, n_ranks=, profile=)`` builds the per-link byte
record of one All-Reduce with :func:`scinjax.traffic.collective_record` and turns it into
seconds with the algorithm's step structure and a :class:`FabricProfile`;
``record_time`` / ``report_time`` do the same for ledger records and whole reports.
"""

from scinjax.timing.calibrate import (
    CalibrationRow,
    calibration_rows,
    fit_nvswitch,
    load_published,
    nvls_rank_rows,
    vllm_rows,
)
from scinjax.timing.model import (
    Steps,
    TimeBreakdown,
    allreduce_time,
    record_breakdown,
    record_time,
    report_time,
    steps,
)
from scinjax.timing.profile import (
    FAMILIES,
    PROVENANCE,
    FabricProfile,
    PerAlgorithm,
    get_profile,
    profile_names,
)

__all__ = [
    "FAMILIES",
    "PROVENANCE",
    "CalibrationRow",
    "FabricProfile",
    "PerAlgorithm",
    "Steps",
    "TimeBreakdown",
    "allreduce_time",
    "calibration_rows",
    "fit_nvswitch",
    "get_profile",
    "load_published",
    "nvls_rank_rows",
    "profile_names",
    "record_breakdown",
    "record_time",
    "report_time",
    "steps",
    "vllm_rows",
]
