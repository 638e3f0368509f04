"""Two processes on localhost, 4 fake CPU devices each, joined by ``jax.distributed``
into one 8-device mesh: the collectives and the TP model under ``shard_map`` give the
bits of the single-device vmap emulation (tests/distributed_worker.py does the work)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
NUM_PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cannot_run(stderr: str) -> str | None:
    """The platform's reason, when it lacks JAX's CPU cross-process collectives."""
    for marker in ("gloo", "Gloo", "cpu_collectives"):
        if marker in stderr and ("not" in stderr or "Unknown" in stderr):
            return f"JAX's CPU cross-process collectives are unavailable here: {marker}"
    return None


@pytest.fixture(scope="module")
def report():
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(NUM_PROCESSES), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(NUM_PROCESSES)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            reason = _cannot_run(err)
            if reason:
                pytest.skip(reason)
            raise AssertionError(f"worker failed (rc={p.returncode}):\n{err[-4000:]}")
    line = next(x for x in outs[0][0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_eight_device_mesh_spans_two_processes(report):
    assert report["processes"] == NUM_PROCESSES
    assert report["devices"] == 8


@pytest.mark.parametrize(
    "check",
    [
        "allreduce[ring]",
        "allreduce[scin:int8]",
        "reduce_scatter[exact]",
        "reduce_scatter[scin:int8]",
        "all_gather[scin:int8]",
        "model[scin:int8]",
    ],
)
def test_multi_process_bits_equal_the_vmap_emulation(report, check):
    assert report["checks"][check] is True, report
