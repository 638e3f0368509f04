"""Peak resident memory of loading a model: ``scinjax.models.load`` from file to device arrays.

Each measurement runs in a fresh Python process: it imports jax and the loaders,
records the resident set (RSS) as the baseline, loads the model (tp=1, exact),
then reports the peak RSS (``ru_maxrss``) above the baseline, and the bytes of
the final weights (the model's params). The ratio peak / final is what
``docs/models.md`` quotes.

    python benchmarks/load_memory.py [--model smollm2-135m] [--weights-dtype float32,bfloat16]
                                     [--src DIR] [--out results/load_memory.json]

``--src DIR`` measures another checkout of the sources (e.g. an older commit
extracted with ``git archive``): DIR must hold ``scinjax/`` and ``models/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, resource, sys, threading, time
import psutil
import jax, numpy as np
from scinjax.models import load
from scinjax.models import loaders  # noqa: F401  (gguf, tokenizers imported before the baseline)
import gguf, tokenizers  # noqa: F401
proc = psutil.Process()
base = proc.memory_info().rss
base_anon = base - proc.memory_info().shared
anon = [0]
done = threading.Event()
def sample():  # peak anonymous memory (RSS without file-backed pages), sampled every 2 ms
    while not done.is_set():
        m = proc.memory_info()
        anon[0] = max(anon[0], m.rss - m.shared - base_anon)
        time.sleep(0.002)
th = threading.Thread(target=sample, daemon=True)
th.start()
kw = {} if sys.argv[2] == "default" else {"weights_dtype": sys.argv[2]}
model = load(sys.argv[1], **kw)
done.set(); th.join()
leaves = jax.tree.leaves(model.params)
final = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in leaves)
jax.block_until_ready(leaves)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(json.dumps(dict(base=base, peak=peak, final=final, after=proc.memory_info().rss,
                      peak_anon=anon[0],
                      params=model.config.num_params(), source=__import__("scinjax").__file__)))
"""


def _source_path(src: str | None) -> dict:
    """Environment that imports scinjax (with scinjax.models) from `src`."""
    env = dict(os.environ)
    if src is None:
        return env
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="scinjax-src-"))
    pkg = tmp / "scinjax"
    pkg.mkdir()
    for entry in pathlib.Path(src, "scinjax").iterdir():
        os.symlink(entry, pkg / entry.name)
    os.symlink(pathlib.Path(src, "models").resolve(), pkg / "models")
    env["PYTHONPATH"] = str(tmp)
    return env


def measure(model: str, dtype: str, src: str | None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, model, dtype],
        capture_output=True,
        text=True,
        env=_source_path(src),
        cwd=tempfile.gettempdir(),  # not the repository: `python -c` puts the cwd first on sys.path
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--weights-dtype", default="float32,bfloat16")
    ap.add_argument("--src", default=None, help="another source tree (scinjax/ + models/)")
    ap.add_argument("--label", default=None, help="label of this run in the table")
    ap.add_argument("--out", default=str(ROOT / "results" / "load_memory.json"))
    args = ap.parse_args(argv)
    rows = []
    for dtype in [d.strip() for d in args.weights_dtype.split(",") if d.strip()]:
        r = measure(args.model, dtype, args.src)
        r.update(model=args.model, weights_dtype=dtype, label=args.label or "this tree")
        r["peak_over_base"] = r["peak"] - r["base"]
        r["ratio"] = r["peak_over_base"] / r["final"]
        r["ratio_anon"] = r["peak_anon"] / r["final"]
        rows.append(r)
    mib = 2**20
    print(
        f"{'source':<14}{'weights':>10}{'final MiB':>11}{'peak RSS MiB':>14}{'ratio':>7}"
        f"{'peak anon MiB':>15}{'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r['label']:<14}{r['weights_dtype']:>10}{r['final'] / mib:>11.1f}"
            f"{r['peak_over_base'] / mib:>14.1f}{r['ratio']:>7.2f}"
            f"{r['peak_anon'] / mib:>15.1f}{r['ratio_anon']:>7.2f}"
        )
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
