"""Wire-format configurations: the int and fp families and plain casts (spec/formats.md).

Every format's ``.name`` parses back with :func:`get` (``get(f.name) == f``): a preset name
when the format equals a preset, else ``int{bits}-b{B}-{scale_dtype}[-{rounding}]`` or
``fp-{element}-b{B}-{scale}[-stochastic]`` (rounding omitted when it is nearest_even).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re

import jax.numpy as jnp
import numpy as np

__all__ = [
    "IntFormat",
    "FpFormat",
    "CastFormat",
    "Format",
    "get",
    "names",
    "SCALE_DTYPES",
    "ROUNDINGS",
    "FP_ELEMENTS",
    "FP_SCALES",
    "FP_ROUNDINGS",
]

SCALE_DTYPES = ("float32", "float16", "bfloat16", "e8m0")
ROUNDINGS = ("nearest_even", "nearest_away", "stochastic")
CAST_DTYPES = ("bfloat16", "float16", "float32")
_SCALE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "e8m0": 1}
_CAST_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
FP_ELEMENTS = ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1")
FP_SCALES = ("e8m0_floor", "e8m0_rceil", "float32", "float16", "bfloat16", "nv")
FP_ROUNDINGS = ("nearest_even", "stochastic")
_FP_SCALE_BYTES = {
    "e8m0_floor": 1,
    "e8m0_rceil": 1,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "nv": 1,
}
NV_TENSOR_SCALE_BYTES = 4  # nv's float32 T_dec, one per quantized array


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntFormat:
    """Linear symmetric integer codes with one scale per block of the last axis.

    A row of H elements travels as ``ceil(H * bits / 8)`` payload bytes plus
    ``ceil(H / block_size)`` scales of ``scale_bytes`` each.
    """

    bits: int = 8
    block_size: int = 32
    scale_dtype: str = "float16"
    rounding: str = "nearest_even"

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"IntFormat.bits must be an int in 2..8, got {self.bits!r}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"IntFormat.bits={self.bits} is out of range; use 2..8")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise TypeError(f"IntFormat.block_size must be an int >= 1, got {self.block_size!r}")
        if self.block_size < 1:
            raise ValueError(f"IntFormat.block_size={self.block_size} must be >= 1 (e.g. 32)")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(
                f"IntFormat.scale_dtype={self.scale_dtype!r} is not supported; "
                f"use one of {SCALE_DTYPES}"
            )
        if self.rounding not in ROUNDINGS:
            raise ValueError(
                f"IntFormat.rounding={self.rounding!r} is not supported; use one of {ROUNDINGS}"
            )

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def scale_bytes(self) -> int:
        return _SCALE_BYTES[self.scale_dtype]

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic"

    @property
    def name(self) -> str:
        for preset, fmt in _PRESETS.items():
            if fmt == self:
                return preset
        base = f"int{self.bits}-b{self.block_size}-{self.scale_dtype}"
        return base if self.rounding == "nearest_even" else f"{base}-{self.rounding}"

    @property
    def jax_scale_dtype(self):
        """The dtype of ``QArray.scales`` (``float8_e8m0fnu`` for e8m0)."""
        return jnp.float8_e8m0fnu if self.scale_dtype == "e8m0" else jnp.dtype(self.scale_dtype)

    def wire_bytes(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(payload, scale) bytes of an array of ``shape`` (blocks tile the last axis)."""
        rows, h = _rows_and_width(shape)
        return rows * math.ceil(h * self.bits / 8), rows * math.ceil(h / self.block_size) * (
            self.scale_bytes
        )

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True, kw_only=True)
class CastFormat:
    """A plain round-to-nearest-even cast to ``dtype``: no scales."""

    dtype: str = "bfloat16"

    def __post_init__(self):
        if self.dtype not in CAST_DTYPES:
            raise ValueError(f"CastFormat.dtype={self.dtype!r} is not supported; use {CAST_DTYPES}")

    @property
    def name(self) -> str:
        return _CAST_NAMES[self.dtype]

    @property
    def element_bytes(self) -> int:
        return np.dtype(jnp.dtype(self.dtype)).itemsize

    @property
    def stochastic(self) -> bool:
        return False

    def wire_bytes(self, shape: tuple[int, ...]) -> tuple[int, int]:
        return math.prod(_checked_shape(shape)) * self.element_bytes, 0

    def __str__(self) -> str:
        return self.name


_FP_BITS = {"e4m3": 8, "e5m2": 8, "e3m2": 6, "e2m3": 6, "e2m1": 4}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FpFormat:
    """Minifloat ``element`` codes with one scale per block of the last axis (OCP MX, NVFP4).

    A row of H elements travels as ``ceil(H * bits / 8)`` payload bytes plus
    ``ceil(H / block_size)`` scales of ``scale_bytes`` each; ``scale="nv"`` adds one float32
    tensor scale (4 bytes) per quantized array.
    """

    element: str = "e4m3"
    block_size: int = 32
    scale: str = "e8m0_floor"
    rounding: str = "nearest_even"

    def __post_init__(self):
        if self.element not in FP_ELEMENTS:
            raise ValueError(
                f"FpFormat.element={self.element!r} is not supported; use one of {FP_ELEMENTS}"
            )
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise TypeError(f"FpFormat.block_size must be an int >= 1, got {self.block_size!r}")
        if self.block_size < 1:
            raise ValueError(f"FpFormat.block_size={self.block_size} must be >= 1 (e.g. 32)")
        if self.scale not in FP_SCALES:
            raise ValueError(
                f"FpFormat.scale={self.scale!r} is not supported; use one of {FP_SCALES}"
            )
        if self.scale == "nv" and self.element != "e2m1":
            raise ValueError(
                f"FpFormat.scale='nv' (NVFP4) needs element='e2m1', got element={self.element!r}; "
                "use an e8m0/float scale for other elements"
            )
        if self.rounding not in FP_ROUNDINGS:
            raise ValueError(
                f"FpFormat.rounding={self.rounding!r} is not supported; use one of {FP_ROUNDINGS}"
            )

    @property
    def bits(self) -> int:
        return _FP_BITS[self.element]

    @property
    def scale_bytes(self) -> int:
        """Bytes of one block scale (the nv tensor scale is counted apart)."""
        return _FP_SCALE_BYTES[self.scale]

    @property
    def tensor_scale_bytes(self) -> int:
        """Bytes of the per-array tensor scale (4 for nv, else 0)."""
        return NV_TENSOR_SCALE_BYTES if self.scale == "nv" else 0

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic"

    @property
    def name(self) -> str:
        for preset, fmt in _PRESETS.items():
            if fmt == self:
                return preset
        base = f"fp-{self.element}-b{self.block_size}-{self.scale}"
        return base if self.rounding == "nearest_even" else f"{base}-{self.rounding}"

    @property
    def jax_scale_dtype(self):
        """The dtype of ``QArray.scales``: float8_e8m0fnu (e8m0), float8_e4m3fn (nv), else float."""
        if self.scale.startswith("e8m0"):
            return jnp.float8_e8m0fnu
        if self.scale == "nv":
            return jnp.float8_e4m3fn
        return jnp.dtype(self.scale)

    def wire_bytes(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(payload, scale) bytes of an array of ``shape``; nv's tensor scale is scale bytes."""
        rows, h = _rows_and_width(shape)
        payload = rows * math.ceil(h * self.bits / 8)
        scale = rows * math.ceil(h / self.block_size) * self.scale_bytes
        tensor = self.tensor_scale_bytes if rows * h > 0 else 0
        return payload, scale + tensor

    def __str__(self) -> str:
        return self.name


Format = IntFormat | FpFormat | CastFormat

_PRESETS: dict[str, Format] = {
    "int8": IntFormat(bits=8, block_size=32, scale_dtype="float16"),
    "mxint8": IntFormat(bits=8, block_size=32, scale_dtype="e8m0"),
    "int8-b128-f32": IntFormat(bits=8, block_size=128, scale_dtype="float32"),
    "int4": IntFormat(bits=4, block_size=32, scale_dtype="float16"),
    "mxfp8": FpFormat(element="e4m3", block_size=32, scale="e8m0_floor"),
    "mxfp8-rceil": FpFormat(element="e4m3", block_size=32, scale="e8m0_rceil"),
    "mxfp8-e5m2": FpFormat(element="e5m2", block_size=32, scale="e8m0_floor"),
    "mxfp6-e3m2": FpFormat(element="e3m2", block_size=32, scale="e8m0_floor"),
    "mxfp6-e2m3": FpFormat(element="e2m3", block_size=32, scale="e8m0_floor"),
    "mxfp4": FpFormat(element="e2m1", block_size=32, scale="e8m0_floor"),
    "nvfp4": FpFormat(element="e2m1", block_size=16, scale="nv"),
    "fp8-b256-f32": FpFormat(element="e4m3", block_size=256, scale="float32"),
    "bf16": CastFormat(dtype="bfloat16"),
    "fp16": CastFormat(dtype="float16"),
    "fp32": CastFormat(dtype="float32"),
}


def names() -> tuple[str, ...]:
    """The preset names accepted by :func:`get`."""
    return tuple(_PRESETS)


def get(name: str | Format, **overrides) -> Format:
    """A format by name (a preset or a ``.name``) with optional field overrides.

    ``get("int8", rounding="stochastic")``, ``get("fp-e3m2-b16-float16")``; a Format passes
    through (with overrides applied). ``get(f.name) == f`` for every format ``f``.
    """
    if isinstance(name, IntFormat | FpFormat | CastFormat):
        fmt = name
    elif isinstance(name, str):
        fmt = _PRESETS.get(name) or _parse_name(name)
    else:
        raise TypeError(f"a format must be a preset name or a Format, got {type(name).__name__}")
    if overrides:
        fields = {f.name for f in dataclasses.fields(fmt)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"{fmt.name} has no field(s) {bad}; its fields are {sorted(fields)}")
        fmt = dataclasses.replace(fmt, **overrides)
    return fmt


def _checked_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of Python ints >= 0 (TypeError/ValueError naming a bad size)."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"shape {dims!r} has a non-integer size {d!r}; sizes must be ints")
        if d < 0:
            raise ValueError(f"shape {dims!r} has a negative size {d}; sizes must be >= 0")
    return tuple(int(d) for d in dims)


_INT_NAME = re.compile(r"int(\d+)-b(\d+)-([a-z0-9]+)(?:-([a-z_]+))?")
_FP_NAME = re.compile(r"fp-(e\dm\d)-b(\d+)-([a-z0-9_]+?)(?:-([a-z_]+))?")


def _parse_name(name: str) -> Format:
    """The format a canonical ``.name`` spells (ValueError naming the grammar otherwise)."""
    m = _INT_NAME.fullmatch(name)
    if m:
        bits, block, scale, rounding = m.groups()
        return IntFormat(
            bits=int(bits),
            block_size=int(block),
            scale_dtype=scale,
            rounding=rounding or "nearest_even",
        )
    m = _FP_NAME.fullmatch(name)
    if m:
        element, block, scale, rounding = m.groups()
        return FpFormat(
            element=element,
            block_size=int(block),
            scale=scale,
            rounding=rounding or "nearest_even",
        )
    raise ValueError(
        f"unknown format {name!r}; use a preset {names()}, "
        "'int{bits}-b{B}-{scale_dtype}[-{rounding}]' (e.g. int6-b64-bfloat16-stochastic) or "
        "'fp-{element}-b{B}-{scale}[-stochastic]' (e.g. fp-e3m2-b16-float16)"
    )


def _rows_and_width(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, H) of an array whose last axis is tiled by blocks; a 0-d array is one element."""
    shape = _checked_shape(shape)
    if not shape:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]
