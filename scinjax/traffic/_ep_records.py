"""MoE dispatch/combine records for the `count_traffic` ledger (spec/moe.md's bytes).

An `EPRecord` sits in a `TrafficReport` beside the All-Reduce records: per-rank
``up_*``/``down_*`` tuples of ONE call (dispatch + combine + routing metadata), ``calls``
times over. ``routing`` says where the bytes come from: ``"concrete"`` (exact Python
ints of `scinjax.moe.ep_traffic` on the routing a forward produced) or ``"uniform"``
(exact Fraction expectation of `scinjax.moe.uniform_ep_traffic` when only shapes are
known, e.g. under abstract tracing; every rank alike).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from scinjax.formats import get
from scinjax.moe import EPCallSpec, ep_traffic, uniform_ep_traffic

__all__ = ["EPRecord", "ep_concrete_record", "ep_uniform_record"]

_FIELDS = ("dispatch_up", "dispatch_down", "combine_up", "combine_down", "meta_up", "meta_down")


def _num(v):
    """A Fraction with denominator 1 as an int (exact counts print and serialize as ints)."""
    v = Fraction(v)
    return int(v) if v.denominator == 1 else v


@dataclasses.dataclass(frozen=True, kw_only=True)
class EPRecord:
    """Bytes of ONE call of one MoE layer's dispatch + combine on each rank's links.

    ``spec``: the layer's static shape (N ranks, T tokens per rank, k, H, E, formats).
    ``parts``: per-rank tuples of ``dispatch_up``, ``dispatch_down``, ``combine_up``,
    ``combine_down``, ``meta_up``, ``meta_down`` (ints, or Fractions for ``uniform``).
    """

    spec: EPCallSpec
    routing: str  # "concrete" or "uniform"
    parts: dict
    label: str | None = None
    calls: int = 1
    phase: str = "forward"
    kind: str = "moe"

    @property
    def n_ranks(self) -> int:
        return self.spec.n_ranks

    @property
    def algorithm(self) -> str:
        return self.spec.algorithm

    @property
    def elements(self) -> int:
        """Token elements one rank dispatches per call (T * H)."""
        return self.spec.tokens * self.spec.hidden

    def _split(self, direction: str, which: int):
        """(payload, scale) bytes per rank of one direction ('up'/'down'); which 0/1."""
        out = []
        s = self.spec
        fmt_d, fmt_c = get(s.dispatch_format), get(s.combine_format)
        wd, wc = (fmt_d.wire_bytes((s.hidden,)), fmt_c.wire_bytes((s.hidden,)))
        for r in range(s.n_ranks):
            d = Fraction(self.parts[f"dispatch_{direction}"][r]) / sum(wd)
            c = Fraction(self.parts[f"combine_{direction}"][r]) / sum(wc)
            v = d * int(wd[which]) + c * int(wc[which])
            if which == 0:  # routing metadata travels as payload
                v += Fraction(self.parts[f"meta_{direction}"][r])
            out.append(_num(v))
        return tuple(out)

    @property
    def up_payload(self):
        return self._split("up", 0)

    @property
    def up_scale(self):
        return self._split("up", 1)

    @property
    def down_payload(self):
        return self._split("down", 0)

    @property
    def down_scale(self):
        return self._split("down", 1)

    @property
    def up(self):
        return tuple(
            _num(sum(Fraction(self.parts[f"{p}_up"][r]) for p in ("dispatch", "combine", "meta")))
            for r in range(self.n_ranks)
        )

    @property
    def down(self):
        return tuple(
            _num(sum(Fraction(self.parts[f"{p}_down"][r]) for p in ("dispatch", "combine", "meta")))
            for r in range(self.n_ranks)
        )

    @property
    def total(self):
        """All links, all calls."""
        return _num(self.calls * (sum(self.up) + sum(self.down)))

    @property
    def collective(self) -> str:
        s = self.spec
        return f"moe.{s.algorithm}[{s.dispatch_format}/{s.combine_format}]"

    def to_dict(self) -> dict:
        s = self.spec

        def plain(v):  # JSON: ints stay ints, expectations become floats
            return v if isinstance(v, int) else float(v)

        return dict(
            kind=self.kind,
            collective=self.collective,
            algorithm=s.algorithm,
            routing=self.routing,
            n_ranks=s.n_ranks,
            n_experts=s.n_experts,
            tokens=s.tokens,
            k=s.k,
            hidden=s.hidden,
            dispatch_format=s.dispatch_format,
            combine_format=s.combine_format,
            label=self.label,
            phase=self.phase,
            calls=self.calls,
            elements=self.elements,
            **{f: [plain(v) for v in self.parts[f]] for f in _FIELDS},
            up_payload=[plain(v) for v in self.up_payload],
            up_scale=[plain(v) for v in self.up_scale],
            down_payload=[plain(v) for v in self.down_payload],
            down_scale=[plain(v) for v in self.down_scale],
        )


def ep_uniform_record(spec: EPCallSpec, calls: int, phase: str = "forward", label=None):
    """spec/moe.md's uniform-routing expectation per rank (exact Fractions), ``calls`` times."""
    exp = uniform_ep_traffic(
        spec.tokens,
        n_ranks=spec.n_ranks,
        n_experts=spec.n_experts,
        k=spec.k,
        hidden=spec.hidden,
        algorithm=spec.algorithm,
        dispatch_format=spec.dispatch_format,
        combine_format=spec.combine_format,
    )
    parts = {f: (_num(exp[f]),) * spec.n_ranks for f in _FIELDS}
    return EPRecord(
        spec=spec, routing="uniform", parts=parts, label=label, calls=calls, phase=phase
    )


def ep_concrete_record(spec: EPCallSpec, experts, label=None, calls: int = 1) -> EPRecord:
    """Exact bytes of `ep_traffic` for the routing ``experts [N, T, k]`` (row s: rank s)."""
    import numpy as np

    ex = np.asarray(experts)
    if ex.shape != (spec.n_ranks, spec.tokens, spec.k):
        raise ValueError(
            f"experts must be [N, T, k] = {[spec.n_ranks, spec.tokens, spec.k]}, "
            f"got {list(ex.shape)}"
        )
    sources = np.repeat(np.arange(spec.n_ranks), spec.tokens)
    t = ep_traffic(
        ex.reshape(-1, spec.k),
        sources,
        n_ranks=spec.n_ranks,
        n_experts=spec.n_experts,
        hidden=spec.hidden,
        algorithm=spec.algorithm,
        dispatch_format=spec.dispatch_format,
        combine_format=spec.combine_format,
    )
    parts = {f: tuple(int(v) for v in getattr(t, f)) for f in _FIELDS}
    return EPRecord(spec=spec, routing="concrete", parts=parts, label=label, calls=calls)
