"""Mutation check of the fp/peers reference: break tests/reference_np_fp.py on purpose, one
mutation at a time (in a temporary copy; the real file is never touched), and show which test
of tests/test_fp_reference.py / tests/test_peers_reference.py catches it.

Run: .venv/bin/python tests/mutation_check_fp.py [--cross-only] [NAME ...]
--cross-only deselects the reference self-checks (golden values, ml_dtypes), so only the
JAX-vs-reference tests can catch the mutation. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["reference_np.py", "reference_np_fp.py", "test_fp_reference.py", "test_peers_reference.py"]
SELF_CHECKS = (
    "golden or ml_dtypes or element_table or closed_form or segments_rule or seeded_with_zero"
)

# name: (description, old text, new text) -- each old text must occur in reference_np_fp.py
MUTATIONS = {
    "rne-ties-away": (
        "element RNE ties go away from zero instead of to the even code",
        "((safe == mid) & (idx % 2 == 1))",
        "(safe == mid)",
    ),
    "rne-truncate": (
        "element rounding truncates toward zero instead of RNE",
        "up = (safe > mid) | ((safe == mid) & (idx % 2 == 1))",
        "up = np.zeros(safe.shape, bool)",
    ),
    "e8m0-floor-off-by-one": (
        "e8m0_floor exponent floor(log2 a) - emax + 1",
        "e = R.floor_log2_f32(np.where(a == 0, F32(1), a)) - elem.emax",
        "e = R.floor_log2_f32(np.where(a == 0, F32(1), a)) - elem.emax + 1",
    ),
    "no-saturation": (
        "values beyond M become NaN (ml_dtypes' non-saturating e4m3/e5m2) instead of +-M",
        "code = np.where(nan, NAN_CODE[elem.name]",
        "code = np.where(nan | (mag > M), NAN_CODE[elem.name]",
    ),
    "rceil-always-up": (
        "e8m0_rceil rounds a power of two up too (floor + 1)",
        "return np.where(pow2, fl, fl + 1)",
        "return fl + 1",
    ),
    "nv-scale-order": (
        "nv block-scale factor T_enc / M (a division) instead of T_enc * f32(1/M)",
        "k_enc = f32_mul(T_enc, f32_div(F32(1), M))",
        "k_enc = f32_div(T_enc, M)",
    ),
    "nv-divide-not-multiply": (
        "nv elements r = v / S instead of v * min(f32(1/S), max)",
        "if mul is None:\n            r = f32_div(vz, safe_S)",
        "if True:\n            r = f32_div(vz, safe_S)",
    ),
    "sr-le": (
        "stochastic rounding takes hi when u <= ratio (not u < ratio)",
        "take_hi = Fraction(float(u[i])) < (rv - lo_s)",
        "take_hi = Fraction(float(u[i])) <= (rv - lo_s)",
    ),
    "two-shot-nv-global-T": (
        "two_shot nv downlink: one tensor scale over the whole sum, not per owner run",
        "ts = _tensor_scale_of([tot2[r, c0:c1] for r, c0, c1 in blks], dn)",
        "ts = tensor_scale(tot2, dn)",
    ),
    "qr-tie-positive": (
        "QuickReduce: on a +a/-a tie the positive element is the signed extreme",
        "m = cand[np.signbit(cand)][0] if np.signbit(cand).any() else cand[0]",
        "m = cand[~np.signbit(cand)][0] if (~np.signbit(cand)).any() else cand[0]",
    ),
    "qr-f32-accumulate": (
        "QuickReduce accumulates without rounding to float16 at each add",
        "acc = f16_sat(acc + c.astype(np.float64)).astype(np.float64)",
        "acc = acc + c.astype(np.float64)",
    ),
    "qr-input-no-saturation": (
        "QuickReduce: bf16/f32 inputs beyond float16 range become Inf (no saturation)",
        "return f16_sat(x.astype(np.float64))",
        "return f16(x.astype(np.float64))",
    ),
    "fi-owner-requantizes": (
        "FlashInfer: the owner also re-quantizes its own segment",
        "y[lo:hi] = acc[lo:hi]",
        "y[lo:hi] = requant[lo:hi]",
    ),
    "fi-no-zero-seed": (
        "FlashInfer: the sum starts from the first operand instead of 0.0",
        "acc = np.zeros(n, F32)",
        "acc = np.full(n, -0.0, F32)",
    ),
    "trt-order-from-0": (
        "TensorRT-LLM: the owner sums in rank order 0..N-1 instead of r, r+1, ...",
        "acc = deq[r][lo:hi]\n        for k in range(1, N):\n"
        "            acc = R.f32_add(acc, deq[(r + k) % N][lo:hi])",
        "acc = deq[0][lo:hi]\n        for k in range(1, N):\n"
        "            acc = R.f32_add(acc, deq[k][lo:hi])",
    ),
    "trt-no-unscaled": (
        "TensorRT-LLM: an Inf amax is scaled (448/Inf = 0) instead of sent unscaled",
        "if a == 0 or np.isinf(a):",
        "if a == 0:",
    ),
}


def run(name: str, cross_only: bool) -> tuple[str, str]:
    desc, old, new = MUTATIONS[name]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "tests"
        d.mkdir()
        for f in FILES:
            shutil.copy(HERE / f, d / f)
        src = (d / "reference_np_fp.py").read_text()
        if src.count(old) != 1:
            return name, f"MUTATION NOT APPLICABLE ({src.count(old)} matches)"
        (d / "reference_np_fp.py").write_text(src.replace(old, new))
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
        ]
        files = [d / "test_fp_reference.py", d / "test_peers_reference.py"]
        if cross_only:  # only the file whose JAX tests exercise the mutated code
            files = files[1:] if name.split("-")[0] in ("qr", "fi", "trt") else files[:1]
            cmd += ["-k", f"not ({SELF_CHECKS})"]
        cmd += ["--rootdir", tmp] + [str(f) for f in files]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        failed = [ln.split(" ")[1] for ln in p.stdout.splitlines() if ln.startswith("FAILED ")]
        if p.returncode == 0:
            return name, "NOT CAUGHT"
        return name, "caught by " + (
            failed[0].split("::", 1)[1] if failed else f"rc={p.returncode}"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(MUTATIONS))
    ap.add_argument("--cross-only", action="store_true")
    args = ap.parse_args()
    bad = 0
    for name in args.names:
        name, result = run(name, args.cross_only)
        bad += not result.startswith("caught")
        print(f"| {name} | {MUTATIONS[name][0]} | {result} |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
