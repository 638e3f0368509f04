"""scinjax sweep: the Pareto front in closed form, and a tiny end-to-end grid."""

from __future__ import annotations

import json

import pytest

from scinjax.apps.sweep import DEFAULT_GRID, SweepGrid, pareto_front


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 1.0), (1.5, 6.0), (0.5, 9.0), (2.0, 0.5), (3.0, 0.7), (1.0, 4.0)]
    # fewest bytes first; a point joins when its KL beats every point with fewer bytes
    assert pareto_front(pts) == [3, 6, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0]


def test_default_grid_covers_the_axes():
    specs = [s for _, s in DEFAULT_GRID.variants]
    assert len(specs) == len(set(specs))
    for needed in (
        "scin:int2-b32-float16",
        "scin:int8-b256-float16",
        "scin:int8-b32-e8m0",
        "scin:int8-b32-float16-stochastic",
        "scin:mxfp4",
        "scin:nvfp4",
        "ring",
        "quickreduce-q4",
        "scin:int8@mlp_out@else=scin",
    ):
        assert needed in specs
    assert DEFAULT_GRID.n_values == (1, 2, 4, 8, 16, 32, 64)
    with pytest.raises(ValueError, match="n_values"):
        SweepGrid(variants=(("x", "scin"),), n_values=(0,))


@pytest.fixture(scope="module")
def tiny_gguf_path(tmp_path_factory):
    import tiny_gguf as tg
    from numpy_llama import random_weights

    config = tg.tiny_config()
    path = tmp_path_factory.mktemp("sweep") / "tiny.gguf"
    tg.write_gguf(path, config, random_weights(config, seed=3))
    return str(path)


def test_tiny_sweep_end_to_end(tiny_gguf_path, tmp_path, capsys):
    from scinjax.cli.sweep import main

    out = tmp_path / "sweep"
    args = ["--model", tiny_gguf_path, "--variants", "scin,scin:int8,scin:int4", "--tp", "2"]
    args += ["--ns", "1,2,8", "--n-variants", "scin:int8", "--ctx", "16", "--tokens", "14"]
    assert main([*args, "--batch", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Pareto front" in text and "KL against N" in text
    res = json.loads((out / "sweep.json").read_text())
    fmt = {r["variant"]: r for r in res["format_rows"]}
    assert list(fmt) == ["exact", "scin", "scin:int8", "scin:int4"]
    assert fmt["scin:int8"]["family"] == "custom"
    n_rows = {(r["n_ranks"], r["variant"]) for r in res["n_rows"]}
    assert n_rows == {(n, v) for n in (1, 2, 8) for v in ("exact", "scin:int8")}
    one = [r for r in res["n_rows"] if r["n_ranks"] == 1]
    assert all(r["kl_mean"] == 0 and r["wire_bytes_per_elem"] == 0 for r in one)  # no wire
    for name in ("sweep.csv", "sweep.txt", "sweep_pareto.png", "sweep_n.png"):
        assert (out / name).stat().st_size > 0
    assert main(["--model", tiny_gguf_path, "--variants", "warp", "--out", str(out)]) == 2
