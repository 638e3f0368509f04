"""Per-call-site collectives: selective quantization of some All-Reduces only.

A :class:`CallPolicy` picks the collective of each call site from its label (the
model's ``attn_out``/``mlp_out``) and layer index: the first matching rule wins,
``default`` serves the rest. Spec strings::

    scin:int8@mlp_out                 int8 on every mlp_out, exact elsewhere
    scin:int8@layers=2..27            int8 on layers 2..27 (inclusive), exact elsewhere
    scin:int8@attn_out@layers=0..3    both conditions
    scin:int8@layers=2..27@else=scin  another collective for the unmatched sites

Several rules need the API: ``CallPolicy(rules=(CallRule(...), ...), default=...)``.
"""

from __future__ import annotations

import dataclasses
import re

from scinjax.collectives._config import Collective

__all__ = ["CallRule", "CallPolicy", "parse_collective_or_policy"]

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]']*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallRule:
    """``collective`` at the call sites whose label is in ``labels`` (None: any) and whose
    layer lies in ``layers`` = (first, last), inclusive (None: any layer)."""

    collective: Collective | str
    labels: tuple[str, ...] | None = None
    layers: tuple[int, int] | None = None

    def __post_init__(self):
        object.__setattr__(self, "collective", Collective.parse(self.collective))
        if self.labels is not None:
            labels = (self.labels,) if isinstance(self.labels, str) else tuple(self.labels)
            if not labels or not all(isinstance(x, str) and _LABEL.match(x) for x in labels):
                raise ValueError(f"CallRule.labels must be call-site names, got {self.labels!r}")
            object.__setattr__(self, "labels", labels)
        if self.layers is not None:
            lo, hi = self.layers
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
                raise TypeError(
                    f"CallRule.layers must be two ints (first, last), got {self.layers}"
                )
            if lo < 0 or hi < lo:
                raise ValueError(
                    f"CallRule.layers={self.layers} must satisfy 0 <= first <= last (inclusive)"
                )
            object.__setattr__(self, "layers", (lo, hi))

    def matches(self, label: str | None, layer: int | None) -> bool:
        if self.labels is not None and label not in self.labels:
            return False
        if self.layers is not None:
            if layer is None:
                return False
            return self.layers[0] <= layer <= self.layers[1]
        return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallPolicy:
    """Collective per call site: the first rule that matches, else ``default``."""

    rules: tuple[CallRule, ...]
    default: Collective | str = "exact"

    def __post_init__(self):
        rules = tuple(self.rules)
        if not rules or not all(isinstance(r, CallRule) for r in rules):
            raise ValueError("CallPolicy.rules must be a non-empty sequence of CallRule")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "default", Collective.parse(self.default))

    def collective_for(self, label: str | None, layer: int | None = None) -> Collective:
        for rule in self.rules:
            if rule.matches(label, layer):
                return rule.collective
        return self.default

    @property
    def collectives(self) -> tuple[Collective, ...]:
        """Every collective the policy can pick (rules first, then the default)."""
        return tuple(dict.fromkeys([r.collective for r in self.rules] + [self.default]))

    @property
    def stochastic(self) -> bool:
        return any(c.stochastic for c in self.collectives)

    @classmethod
    def parse(cls, spec: str) -> CallPolicy:
        """``SPEC@sel[@sel...]``; ``sel`` is a label, ``layers=A..B`` or ``else=SPEC``."""
        if isinstance(spec, CallPolicy):
            return spec
        if not isinstance(spec, str) or "@" not in spec:
            raise ValueError(f"a call policy looks like 'scin:int8@mlp_out', got {spec!r}")
        head, *selectors = spec.strip().split("@")
        labels, layers, default = [], None, "exact"
        for sel in selectors:
            key, sep, value = sel.partition("=")
            if not sep:
                if not _LABEL.match(sel):
                    raise ValueError(f"bad call-site label {sel!r} in policy {spec!r}")
                labels.append(sel)
            elif key == "layers":
                m = re.fullmatch(r"(\d+)\.\.(\d+)", value)
                if layers is not None or not m:
                    raise ValueError(
                        f"bad layers selector {sel!r} in policy {spec!r}; use layers=FIRST..LAST "
                        "(inclusive), once"
                    )
                layers = (int(m.group(1)), int(m.group(2)))
            elif key == "else":
                default = value
            else:
                raise ValueError(
                    f"unknown selector {sel!r} in policy {spec!r}; use a label (e.g. mlp_out), "
                    "layers=A..B or else=SPEC"
                )
        rule = CallRule(collective=head, labels=tuple(labels) or None, layers=layers)
        return cls(rules=(rule,), default=default)

    def __str__(self) -> str:
        if len(self.rules) != 1:
            body = "; ".join(
                f"{r.collective}@{','.join(r.labels or ['*'])}@layers={r.layers}"
                for r in self.rules
            )
            return f"CallPolicy({body}; else {self.default})"
        r = self.rules[0]
        text = str(r.collective)
        for label in r.labels or ():
            text += f"@{label}"
        if r.layers is not None:
            text += f"@layers={r.layers[0]}..{r.layers[1]}"
        if self.default != Collective(algorithm="exact"):
            text += f"@else={self.default}"
        return text


def parse_collective_or_policy(spec) -> Collective | CallPolicy:
    """A Collective, a CallPolicy, or a spec string of either (a policy has an ``@``)."""
    if isinstance(spec, Collective | CallPolicy):
        return spec
    if isinstance(spec, str) and "@" in spec:
        return CallPolicy.parse(spec)
    return Collective.parse(spec)
