"""Cross-check of the NumPy fp reference (tests/reference_np_fp.py) against torchao's MX and
NVFP4 quantizers (a library nobody here wrote). Not collected by pytest; needs torch and
torchao, which scinjax does not depend on. Run in a separate environment, e.g.

    python3.11 -m venv /tmp/taovenv
    /tmp/taovenv/bin/pip install torch==2.13.0 torchao==0.18.0 ml_dtypes==0.6.0 numpy
    /tmp/taovenv/bin/python tests/crosscheck_torchao.py

Results and the cause of every disagreement: docs/testing.md.
"""

import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import reference_np_fp as F  # noqa: E402
import torch  # noqa: E402
from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor  # noqa: E402
from torchao.prototype.mx_formats.config import ScaleCalculationMode as SCM  # noqa: E402

rng = np.random.default_rng(0)


def data(rows=256, H=256):
    v = rng.standard_normal((rows, H)) * np.exp2(rng.integers(-20, 20, (rows, 1)))
    v *= np.exp2(rng.integers(-3, 3, (rows, H)))
    # ties: rows made of element midpoints times a power of two
    return v.astype(np.float32)


ELEM = {
    "e4m3": torch.float8_e4m3fn,
    "e5m2": torch.float8_e5m2,
    "e3m2": "fp6_e3m2",
    "e2m3": "fp6_e2m3",
    "e2m1": torch.float4_e2m1fn_x2,
}
for name, el in F.ELEMENTS.items():
    v = el.values
    mids = (v[:-1] + v[1:]) / 2
    tie_rows = (
        rng.choice(np.concatenate([v, mids]), (64, 256))
        * rng.choice([-1, 1], (64, 256))
        * np.exp2(rng.integers(-10, 10, (64, 1)))
    ).astype(np.float32)
    tie_rows[:, ::32] = np.float32(el.M * 1.9)  # block amax just below 2**(emax+1)
    x = np.concatenate([data(), tie_rows])
    for mode, scale in [(SCM.FLOOR, "e8m0_floor"), (SCM.RCEIL, "e8m0_rceil")]:
        ref = F.RefFp(element=name, block_size=32, scale=scale)
        c, s, _ = F.quantize(x, ref)
        y_ref = F.dequantize_f32(c, s, ref)
        try:
            s_t, d_t = mx_tensor.to_mx(torch.from_numpy(x), ELEM[name], 32, mode)
            y_t = mx_tensor.to_dtype(d_t, s_t, ELEM[name], 32, torch.float32).numpy()
        except Exception as e:
            print(f"{name:5s} {scale:10s} torchao error: {type(e).__name__}: {str(e)[:100]}")
            continue
        s_codes = s_t.view(torch.uint8).numpy().reshape(s.shape)
        ds = int((s_codes != s.view(np.uint8)).sum())
        dy = ~((y_t.view(np.uint32) == y_ref.view(np.uint32)) | (np.isnan(y_t) & np.isnan(y_ref)))
        print(
            f"{name:5s} {scale:10s} scales differ {ds}/{s.size}, values differ "
            f"{int(dy.sum())}/{x.size}"
        )
        if dy.any():
            i = tuple(np.argwhere(dy)[0])
            print("   first:", i, "x", x[i], "ref", y_ref[i], "torchao", y_t[i])


# NVFP4 with torchao's per-tensor scale: block scales and codes
rng = np.random.default_rng(0)
for spread in [3, 6, 12]:
    x = (rng.standard_normal((256, 256)) * np.exp2(rng.integers(-spread, spread, (256, 1)))).astype(
        np.float32
    )
    xt = torch.from_numpy(x)
    pts = nvfp4_tensor.per_tensor_amax_to_scale(torch.max(torch.abs(xt)))
    sc, dq = nvfp4_tensor.nvfp4_quantize(xt, 16, pts)
    c, s, t = F.quantize(x, F.PRESETS["nvfp4"])
    a = sc.view(torch.float8_e4m3fn).float().numpy().reshape(s.shape)
    b = s.astype(np.float32)
    u8 = dq.numpy()
    codes_t = np.stack([u8 & 0xF, u8 >> 4], -1).reshape(c.shape)
    d = a != b
    small = b < 2**-6
    dc = codes_t != c
    print(
        f"spread 2^±{spread}: block scales differ {d.sum()}/{d.size} (of which ours below 2^-6: "
        f"{(d & small).sum()}; elsewhere {(d & ~small).sum()}), codes differ {dc.sum()}/{dc.size}; "
        f"codes differ in blocks with equal scales: {(dc & np.repeat(~d, 16, -1)).sum()}"
    )
    if (d & ~small).any():
        i = tuple(np.argwhere(d & ~small)[0])
        print("   e.g.", i, "torchao", a[i], "ours", b[i])

# edge cases: S = 2**-127, float32 subnormal inputs, Inf, near-max
x = np.zeros((4, 32), np.float32)
x[0, :2] = [2.0**-120, 2.0**-122]  # e = -128 -> clamp -127: S = 2**-127 (subnormal)
x[1, :2] = [2.0**-130, 3 * 2.0**-131]  # float32 subnormal input
x[2, :2] = [np.inf, 1.0]  # poisoned block
x[3, :2] = [3e38, 1.0]
for name, et in [("e4m3", torch.float8_e4m3fn), ("e2m1", torch.float4_e2m1fn_x2)]:
    ref = F.RefFp(element=name, block_size=32, scale="e8m0_floor")
    c, s, _ = F.quantize(x, ref)
    y = F.dequantize_f32(c, s, ref)
    st, dt = mx_tensor.to_mx(torch.from_numpy(x), et, 32, SCM.FLOOR)
    yt = mx_tensor.to_dtype(dt, st, et, 32, torch.float32).numpy()
    print(
        name,
        "scale codes ours",
        list(s.view(np.uint8)[:, 0]),
        "torchao",
        list(st.view(torch.uint8).numpy().reshape(-1)),
    )
    print("   ours", y[:, :2].tolist(), "\n   torchao", yt[:, :2].tolist())
