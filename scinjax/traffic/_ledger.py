"""``count_traffic``: find every All-Reduce in a traced function and add up its bytes."""

from __future__ import annotations

import dataclasses
from collections import Counter

import jax

from scinjax.collectives._marker import lookup
from scinjax.collectives._scatter_gather import SGSpec, lookup_sg
from scinjax.moe._ledger import EPCallSpec, lookup_ep
from scinjax.traffic._ep_records import ep_uniform_record
from scinjax.traffic._records import TrafficRecord, collective_record
from scinjax.traffic._sg_records import sg_spec_record

__all__ = ["TrafficReport", "count_traffic", "algbw", "busbw"]


@dataclasses.dataclass(frozen=True)
class TrafficReport:
    """Every All-Reduce a function performs and the exact bytes on each directed link.

    ``up[i]`` / ``down[i]``: total bytes (payload + scales) on rank i's up/down link over
    all records and their ``calls``; payload and scale totals sit beside them.
    """

    records: tuple[TrafficRecord, ...]

    @property
    def n_ranks(self) -> int:
        sizes = {r.n_ranks for r in self.records}
        if len(sizes) > 1:
            raise ValueError(f"records span several rank counts {sorted(sizes)}")
        return sizes.pop() if sizes else 0

    def _sum(self, field: str) -> tuple[int, ...]:
        totals = [0] * self.n_ranks
        for r in self.records:
            for i, v in enumerate(getattr(r, field)):
                totals[i] += r.calls * v
        return tuple(totals)

    @property
    def up_payload(self) -> tuple[int, ...]:
        return self._sum("up_payload")

    @property
    def up_scale(self) -> tuple[int, ...]:
        return self._sum("up_scale")

    @property
    def down_payload(self) -> tuple[int, ...]:
        return self._sum("down_payload")

    @property
    def down_scale(self) -> tuple[int, ...]:
        return self._sum("down_scale")

    @property
    def up(self) -> tuple[int, ...]:
        return self._sum("up")

    @property
    def down(self) -> tuple[int, ...]:
        return self._sum("down")

    @property
    def total(self) -> int:
        return sum(r.total for r in self.records)

    @property
    def max_link_bytes(self) -> int:
        """Bytes on the busiest directed link."""
        return max(self.up + self.down, default=0)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.records)

    def to_dict(self) -> dict:
        return dict(
            n_ranks=self.n_ranks,
            calls=self.calls,
            up=_plain(self.up),
            down=_plain(self.down),
            up_payload=_plain(self.up_payload),
            up_scale=_plain(self.up_scale),
            down_payload=_plain(self.down_payload),
            down_scale=_plain(self.down_scale),
            total=_plain([self.total])[0],
            records=[r.to_dict() for r in self.records],
        )

    def table(self) -> str:
        """One line per record: calls, elements, bytes on rank 0's links, all-link total."""
        head = f"{'collective':<28}{'label':<14}{'calls':>6}{'elements':>14}"
        head += f"{'up[0] B':>16}{'down[0] B':>16}{'total B':>18}"
        lines = [head, "-" * len(head)]
        for r in self.records:
            lines.append(
                f"{r.collective:<27} {_label(r):<14}{r.calls:>6}{r.elements:>14,}"
                f"{round(r.up[0]):>16,}{round(r.down[0]):>16,}{round(r.total):>18,}"
            )
        lines.append(
            f"{'total':<42}{self.calls:>6}{'':>14}"
            f"{round(self.up[0]) if self.records else 0:>16,}"
            f"{round(self.down[0]) if self.records else 0:>16,}{round(self.total):>18,}"
        )
        return "\n".join(lines)


def _plain(values) -> list:
    """Ints as they are; MoE expectations (Fractions) as floats, for JSON."""
    return [v if isinstance(v, int) else float(v) for v in values]


def _label(r: TrafficRecord) -> str:
    """``label`` (or ``-``), with ``/backward`` or ``/recompute`` outside the forward pass."""
    name = r.label or "-"
    return name if r.phase == "forward" else f"{name}/{r.phase}"


def _subjaxprs(params):
    for value in params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _is_call(eqn) -> bool:
    """A marker jit that runs the collective: one output from >= 1 input.

    Partial evaluation (e.g. scan hoisting loop invariants under jax.grad) may split a
    marker jit into a zero-input copy computing the kernel's constants (several outputs)
    and the call itself; only the call moves bytes.
    """
    return len(eqn.outvars) == 1 and len(eqn.invars) >= 1


def _walk(jaxpr, multiplicity: int, found: Counter, recompute: bool = False) -> None:
    for eqn in jaxpr.eqns:
        name = str(eqn.params.get("name", ""))
        spec = lookup(name) or lookup_sg(name) or lookup_ep(name)
        if spec is not None:
            if _is_call(eqn):
                own = getattr(spec, "phase", "forward")  # MoE dispatch markers: forward
                phase = "recompute" if recompute and own == "forward" else own
                found[(spec, phase)] += multiplicity
            continue
        inner = Counter()
        # a differentiated checkpoint (remat) in the backward pass runs its forward calls
        # again: those are counted apart as "recompute"
        again = recompute or (
            eqn.primitive.name in ("checkpoint", "remat2", "remat")
            and bool(eqn.params.get("differentiated", False))
        )
        for sub in _subjaxprs(eqn.params):
            _walk(sub, 1, inner, again)
        if not inner:
            continue
        prim = eqn.primitive.name
        if prim in ("cond", "while", "switch"):
            raise ValueError(
                f"count_traffic found All-Reduces inside a `{prim}`, whose trip count or "
                "branch depends on data; count each branch/iteration with its own call"
            )
        factor = int(eqn.params["length"]) if prim == "scan" else 1
        for spec_, count in inner.items():
            found[spec_] += multiplicity * factor * count


def count_traffic(fn, *args, **kwargs) -> TrafficReport:
    """Trace ``fn(*args, **kwargs)`` abstractly and count the bytes of every All-Reduce.

    Arguments may be arrays or ``jax.ShapeDtypeStruct``; no arithmetic runs, so this is
    cheap for LLaMA-2-70B-sized activations. Calls inside ``scan`` count ``length`` times.
    MoE layers (``scinjax.moe.dispatch`` markers) give `EPRecord`s of dispatch + combine
    with the uniform-routing expectation of spec/moe.md (``routing="uniform"``: routing is
    data, unknown to a trace); `EPRecord`/`ep_concrete_record` give exact bytes of a
    concrete routing (``models.model_traffic(..., weights=, ids=)`` does this).
    Records come in order of first appearance, one per distinct call site configuration
    and phase: under ``jax.grad`` the All-Reduces of cotangents have ``phase="backward"``
    (their own formats), forward calls that ``jax.checkpoint`` runs again ``"recompute"``.
    """
    if not callable(fn):
        raise TypeError(f"count_traffic needs a callable, got {type(fn).__name__}")
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    found: Counter = Counter()
    _walk(closed.jaxpr, 1, found)
    records = tuple(
        sg_spec_record(spec, count, phase)
        if isinstance(spec, SGSpec)
        else ep_uniform_record(spec, count, phase, label="moe")
        if isinstance(spec, EPCallSpec)
        else collective_record(
            spec.algorithm,
            n_ranks=spec.n_ranks,
            shape=spec.shape,
            dtype=spec.dtype,
            uplink=spec.uplink,
            downlink=spec.downlink,
            label=spec.label,
            calls=count,
            phase=phase,
        )
        for (spec, phase), count in found.items()
    )
    return TrafficReport(records)


def algbw(message_bytes: int, seconds: float) -> float:
    """nccl-tests algorithm bandwidth, bytes/s: message size per rank over time."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return message_bytes / seconds


def busbw(message_bytes: int, seconds: float, n_ranks: int) -> float:
    """nccl-tests AllReduce bus bandwidth, bytes/s: algbw * 2(N-1)/N, whatever the algorithm
    actually moves (so it can exceed the link rate for algorithms that move less)."""
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    return algbw(message_bytes, seconds) * 2 * (n_ranks - 1) / n_ranks
