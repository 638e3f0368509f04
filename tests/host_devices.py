"""Run a test script in a subprocess whose JAX sees N fake CPU devices.

The device count must be set before jax starts, hence a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` appended to the caller's flags.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["TESTS_DIR", "run_on_host_devices"]

TESTS_DIR = str(Path(__file__).resolve().parent)


def run_on_host_devices(script: str, *, devices: int = 8, **names) -> subprocess.CompletedProcess:
    """Run ``script`` with ``devices`` CPU devices; ``TESTS_DIR`` and every keyword in
    ``names`` are defined (as their ``repr``) before it. Returns the finished process."""
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    env["JAX_PLATFORMS"] = "cpu"
    preamble = "".join(f"{k} = {v!r}\n" for k, v in dict(TESTS_DIR=TESTS_DIR, **names).items())
    return subprocess.run(
        [sys.executable, "-c", preamble + script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
