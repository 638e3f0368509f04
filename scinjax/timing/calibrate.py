"""Calibration of the NVSwitch presets against public measurements, and fit errors.

Only the measurements in ``published.json`` marked for calibration are fitted:

1. ``efficiency.ring``: ring busbw at 8 GiB equals the public 367.5 GB/s (8xH100).
2. ``efficiency.nvls``: NVLS busbw at 8 GiB equals the sweep's 478.9 GB/s (8xH100) or the
   public ~475 GB/s (8xH200).
3. ``sync_overhead.nvls``: NVLS on 2 ranks under CUDA graphs takes the public ~6 us.
4. ``eager_overhead.nvls``: minimises the largest relative error over the 8xH100 NVLS
   sweep from 64 KiB up (no CUDA graphs, as measured).

Every other constant is assumed (:mod:`scinjax.timing.profile`). Nothing is fitted to a
SCIN speedup. Everything else in ``published.json`` is used for validation only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json

from scinjax.timing.model import allreduce_time
from scinjax.timing.profile import FabricProfile, get_profile
from scinjax.traffic import busbw

__all__ = [
    "CalibrationRow",
    "calibration_rows",
    "fit_nvswitch",
    "load_published",
    "max_abs_error",
    "nvls_rank_rows",
    "vllm_rows",
]

_GB = 1e9
_FIT_FROM = 65536  # the sweep is fitted (and must be within 25%) from 64 KiB up


@functools.cache
def _published_text() -> str:
    return importlib.resources.files("scinjax.timing").joinpath("published.json").read_text()


def load_published() -> dict:
    """The public measurements and claims stored with the package (a fresh dict)."""
    return json.loads(_published_text())


def _bisect(f, lo: float, hi: float, iters: int = 80) -> float:
    """Root of an increasing-or-decreasing ``f`` on [lo, hi] (sign change assumed)."""
    f_lo = f(lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f_mid = f(mid)
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _busbw(alg: str, size: int, n_ranks: int, profile: FabricProfile) -> float:
    t = allreduce_time(alg, size, n_ranks=n_ranks, profile=profile)
    return busbw(size, t, n_ranks) / _GB


def _sweep_errors(profile: FabricProfile, sweep: dict, start: int = _FIT_FROM) -> list[float]:
    out = []
    for size, bw in zip(sweep["size_bytes"], sweep["busbw_GBps"], strict=True):
        if size >= start:
            out.append(_busbw("nvls", size, sweep["n_ranks"], profile) / bw - 1.0)
    return out


def fit_nvswitch(base: FabricProfile | str = "h100-nvswitch-8") -> dict[str, float]:
    """Refit the four calibrated constants on top of ``base``'s assumed ones.

    Returns ``{"efficiency.ring", "efficiency.nvls", "efficiency.nvls.h200",
    "sync_overhead.nvls", "eager_overhead.nvls"}`` (seconds or fractions).
    """
    data = load_published()
    p = get_profile(base)
    ring, nvls, nvls200 = (
        data[k] for k in ("ring_busbw_8xh100", "nvls_busbw_8xh100", "nvls_busbw_8xh200")
    )
    sweep, graph = data["nvls_sweep_8xh100"], data["nvls_graph_latency_2xh100"]

    def with_(prof, field, family, value):
        per = dataclasses.replace(getattr(prof, field), **{family: value})
        return prof.replace(**{field: per})

    def solve_eff(prof, family, target):
        size, n = target["size_bytes"], target["n_ranks"]
        return _bisect(
            lambda e: (
                _busbw(family, size, n, with_(prof, "efficiency", family, e)) - target["busbw_GBps"]
            ),
            1e-3,
            1.0,
        )

    p = with_(p, "efficiency", "ring", solve_eff(p, "ring", ring))
    # The graph-mode latency fixes the NVLS sync cost (independent of the eager term).
    g = p.replace(cuda_graphs=True)
    sync = _bisect(
        lambda s: (
            allreduce_time(
                "nvls",
                graph["size_bytes"],
                n_ranks=graph["n_ranks"],
                profile=with_(g, "sync_overhead", "nvls", s),
            )
            * 1e6
            - graph["latency_us"]
        ),
        0.0,
        50e-6,
    )
    p = with_(p, "sync_overhead", "nvls", sync)
    top = dict(nvls, busbw_GBps=sweep["busbw_GBps"][-1], size_bytes=sweep["size_bytes"][-1])
    for _ in range(4):  # efficiency (large sizes) and eager overhead (small) barely interact
        p = with_(p, "efficiency", "nvls", solve_eff(p, "nvls", top))
        lo, hi = 0.0, 100e-6
        for _ in range(60):  # ternary search: the max of |error| is unimodal in the overhead
            a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            ea = max(abs(e) for e in _sweep_errors(with_(p, "eager_overhead", "nvls", a), sweep))
            eb = max(abs(e) for e in _sweep_errors(with_(p, "eager_overhead", "nvls", b), sweep))
            lo, hi = (lo, b) if ea <= eb else (a, hi)
        p = with_(p, "eager_overhead", "nvls", 0.5 * (lo + hi))
    eff200 = solve_eff(p, "nvls", nvls200)
    return {
        "efficiency.ring": p.efficiency.ring,
        "efficiency.nvls": p.efficiency.nvls,
        "efficiency.nvls.h200": eff200,
        "sync_overhead.nvls": p.sync_overhead.nvls,
        "eager_overhead.nvls": p.eager_overhead.nvls,
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationRow:
    """One measured point against the model (``error`` = model / measured - 1)."""

    label: str
    measured: float
    model: float
    unit: str
    fitted: bool

    @property
    def error(self) -> float:
        return self.model / self.measured - 1.0


def calibration_rows(profile: FabricProfile | str = "h100-nvswitch-8") -> list[CalibrationRow]:
    """The NVLS sweep (busbw per size) and the large-message ring/NVLS busbw."""
    data = load_published()
    p = get_profile(profile).replace(cuda_graphs=False)
    sweep = data["nvls_sweep_8xh100"]
    rows = [
        CalibrationRow(
            label=f"nvls {name}",
            measured=bw,
            model=_busbw("nvls", size, sweep["n_ranks"], p),
            unit="GB/s busbw",
            fitted=size >= _FIT_FROM,
        )
        for name, size, bw in zip(
            sweep["sizes"], sweep["size_bytes"], sweep["busbw_GBps"], strict=True
        )
    ]
    for key, alg in (("ring_busbw_8xh100", "ring"), ("nvls_busbw_8xh100", "nvls")):
        d = data[key]
        rows.append(
            CalibrationRow(
                label=f"{alg} large ({d['size_bytes'] >> 30} GiB)",
                measured=d["busbw_GBps"],
                model=_busbw(alg, d["size_bytes"], d["n_ranks"], p),
                unit="GB/s busbw",
                fitted=alg == "ring",
            )
        )
    return rows


def nvls_rank_rows(profile: FabricProfile | str = "h100-nvswitch-8") -> list[CalibrationRow]:
    """NVLS large-message busbw against N = 2..8 (validation: only N = 8 is fitted)."""
    d = load_published()["nvls_busbw_vs_ranks_h100"]
    p = get_profile(profile).replace(cuda_graphs=False)
    return [
        CalibrationRow(
            label=f"nvls N={n}",
            measured=bw,
            model=_busbw("nvls", d["size_bytes"], n, p),
            unit="GB/s busbw",
            fitted=False,
        )
        for n, bw in zip(d["n_ranks"], d["busbw_GBps"], strict=True)
    ]


def vllm_rows(profile: FabricProfile | str = "h100-nvswitch-8") -> list[CalibrationRow]:
    """Best of one_shot/two_shot against vLLM's custom all-reduce (validation only)."""
    d = load_published()["vllm_custom_allreduce_6xh100"]
    p = get_profile(profile).replace(cuda_graphs=d["cuda_graphs"])
    rows = []
    for size, us in zip(d["size_bytes"], d["latency_us"], strict=True):
        t = min(
            allreduce_time(a, size, n_ranks=d["n_ranks"], profile=p)
            for a in ("one_shot", "two_shot")
        )
        rows.append(
            CalibrationRow(
                label=f"sw best {size / 2**20:g} MiB N={d['n_ranks']}",
                measured=us,
                model=t * 1e6,
                unit="us",
                fitted=False,
            )
        )
    return rows


def max_abs_error(rows: list[CalibrationRow], *, fitted_only: bool = True) -> float:
    """Largest |relative error| over ``rows`` (only the fitted ones by default)."""
    return max(abs(r.error) for r in rows if r.fitted or not fitted_only)
