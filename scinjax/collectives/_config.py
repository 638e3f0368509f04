"""All-Reduce configuration: algorithm, link formats, reduction order, adder precision."""

from __future__ import annotations

import dataclasses

from scinjax.collectives._peers import PEER_ALGORITHMS
from scinjax.formats import Format, FpFormat, IntFormat, get

__all__ = ["ALGORITHMS", "ORDERS", "ACCUMULATE_DTYPES", "Collective", "int_block_size"]

ALGORITHMS = ("ring", "one_shot", "two_shot", "nvls", "scin", "exact")
ORDERS = ("rank", "pairwise")
ACCUMULATE_DTYPES = ("float32", "bfloat16", "float16")
_QUANTIZING = ("scin", "two_shot")
_SPEC_OPTIONS = ("order", "accumulate")  # spelled "+key=value" in spec strings


def _link(fmt) -> Format | None:
    return None if fmt is None else get(fmt)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Collective:
    """One All-Reduce configuration (spec/collectives.md).

    ``uplink``/``downlink``: a wire format (name or Format) for ``scin`` (INQ) and
    ``two_shot`` (quantized two-shot); ``None`` carries the input dtype itself.
    """

    algorithm: str
    uplink: Format | str | None = None
    downlink: Format | str | None = None
    order: str = "rank"
    accumulate: str = "float32"

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS + PEER_ALGORITHMS:
            raise ValueError(
                f"unknown algorithm {self.algorithm!r}; use one of {ALGORITHMS} or a peer "
                f"scheme {PEER_ALGORITHMS}"
            )
        object.__setattr__(self, "uplink", _link(self.uplink))
        object.__setattr__(self, "downlink", _link(self.downlink))
        if self.algorithm in PEER_ALGORITHMS:
            _check_peer(self)
        if self.quantized and self.algorithm not in _QUANTIZING:
            raise ValueError(
                f"algorithm {self.algorithm!r} moves the input dtype only; link formats "
                f"(uplink={self.uplink}, downlink={self.downlink}) need one of {_QUANTIZING}"
            )
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; use one of {ORDERS}")
        if self.algorithm == "ring" and self.order != "rank":
            raise ValueError(
                "ring's reduction order is fixed by the ring (chunk c is summed from rank c+1 "
                "onwards); use order='rank' with ring, or another algorithm for 'pairwise'"
            )
        if self.accumulate not in ACCUMULATE_DTYPES:
            raise ValueError(
                f"unknown accumulate dtype {self.accumulate!r}; use one of {ACCUMULATE_DTYPES}"
            )
        if self.algorithm == "exact" and (self.order, self.accumulate) != ("rank", "float32"):
            raise ValueError(
                "'exact' is the fixed rank-order float32 reduction; use another algorithm to "
                f"study order={self.order!r} / accumulate={self.accumulate!r}"
            )
        if self.algorithm == "two_shot":
            blocks = {
                f.block_size
                for f in (self.uplink, self.downlink)
                if isinstance(f, IntFormat | FpFormat)
            }
            if len(blocks) > 1:
                raise ValueError(
                    f"quantized two_shot slices on block boundaries, so uplink ({self.uplink}) "
                    f"and downlink ({self.downlink}) need the same block_size, got {sorted(blocks)}"
                )

    @property
    def quantized(self) -> bool:
        """True when a link carries a format (other than the input dtype)."""
        return self.uplink is not None or self.downlink is not None

    @property
    def stochastic(self) -> bool:
        return any(f is not None and f.stochastic for f in (self.uplink, self.downlink))

    @property
    def block_size(self) -> int | None:
        """Block size of the block format(s) on the links (quantized two_shot's slicing unit)."""
        return int_block_size(self.uplink, self.downlink)

    @classmethod
    def parse(cls, spec: str, **options) -> Collective:
        """Parse ``ALGO[:UPLINK[/DOWNLINK]][+order=...][+accumulate=...]``.

        ``scin:int8`` (both links), ``scin:bf16/int8``, ``scin:none/int8`` (uplink carries
        the input dtype), ``scin:int8+order=pairwise+accumulate=bfloat16``. Format names are
        those of :func:`scinjax.formats.get`, including the descriptive names every
        format's ``.name`` gives, so ``Collective.parse(str(c)) == c`` for every ``c``.
        """
        if isinstance(spec, Collective):
            return dataclasses.replace(spec, **options) if options else spec
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"a collective spec must be a string like 'scin:int8', got {spec!r}")
        head, *extras = spec.strip().split("+")
        parsed = {}
        for extra in extras:
            key, sep, value = extra.partition("=")
            if not sep or key not in _SPEC_OPTIONS or not value:
                raise ValueError(
                    f"bad option {extra!r} in collective spec {spec!r}; options are "
                    + ", ".join(f"+{k}=..." for k in _SPEC_OPTIONS)
                )
            if key in parsed or key in options:
                raise ValueError(f"option {key!r} given twice in collective spec {spec!r}")
            parsed[key] = value
        algorithm, _, formats = head.partition(":")
        uplink = downlink = None
        if formats:
            up, sep, down = formats.partition("/")
            if not up or (sep and not down):
                raise ValueError(
                    f"bad collective spec {spec!r}; expected "
                    "ALGO[:UPLINK[/DOWNLINK]][+option=value]"
                )
            uplink, downlink = up, (down if sep else up)
            uplink, downlink = (None if f == "none" else f for f in (uplink, downlink))
        return cls(algorithm=algorithm, uplink=uplink, downlink=downlink, **parsed, **options)

    def __str__(self) -> str:
        text = self.algorithm
        if self.quantized:
            up = "none" if self.uplink is None else self.uplink.name
            down = "none" if self.downlink is None else self.downlink.name
            text += f":{up}" if up == down else f":{up}/{down}"
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in _SPEC_OPTIONS:
            if getattr(self, key) != defaults[key]:
                text += f"+{key}={getattr(self, key)}"
        return text

    def __call__(self, x, axis_name, *, key=None, label=None):
        from scinjax.collectives._allreduce import allreduce

        return allreduce(x, axis_name, self, key=key, label=label)


def _check_peer(c: Collective) -> None:
    """Peer schemes (spec/peers.md) fix their own wire format, order and adder."""
    if c.quantized:
        raise ValueError(
            f"{c.algorithm!r} has its own wire format (spec/peers.md); drop the link formats "
            f"(uplink={c.uplink}, downlink={c.downlink}), e.g. Collective.parse({c.algorithm!r})"
        )
    if (c.order, c.accumulate) != ("rank", "float32"):
        raise ValueError(
            f"{c.algorithm!r} fixes its own reduction order and adder (spec/peers.md); "
            f"leave order='rank' and accumulate='float32', got order={c.order!r}, "
            f"accumulate={c.accumulate!r}"
        )


def int_block_size(uplink: Format | None, downlink: Format | None) -> int | None:
    """Block size of the first block (int or fp) format among the links; None if none."""
    for f in (uplink, downlink):
        if isinstance(f, IntFormat | FpFormat):
            return f.block_size
    return None
