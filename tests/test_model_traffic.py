"""Traffic of full-size models against closed-form formulas (spec/collectives.md).

Every layer makes two All-Reduces of n = batch*tokens*hidden elements per rank.
The formulas below are written out here, independently of the ledger; the
models are LLaMA-2 shapes evaluated abstractly (a 70B model would need 275 GB
as float32: these tests passing on a small machine shows nothing is allocated).
"""

from __future__ import annotations

import json
import math

import pytest
from scinjax.models import get_config, model_traffic

from scinjax.cli.traffic import main

BF16 = 2


def chunks(n: int, N: int) -> list[int]:
    return [n // N + (j < n % N) for j in range(N)]


def per_call(algo: str, *, n: int, N: int, rows: int, hidden: int):
    """(up[i], down[i]) bytes of one All-Reduce of [rows, hidden] bf16 per rank, by formula."""
    b = BF16
    s = chunks(n, N)
    if algo == "ring":
        up = [(2 * n - s[r] - s[(r + 1) % N]) * b for r in range(N)]
        down = [(2 * n - s[(r - 1) % N] - s[r]) * b for r in range(N)]
        return up, down
    if algo == "one_shot":
        return [(N - 1) * n * b] * N, [(N - 1) * n * b] * N
    if algo == "two_shot":
        v = [(n - s[i]) * b + (N - 1) * s[i] * b for i in range(N)]
        return v, v
    if algo == "nvls":
        v = [(n + s[i]) * b for i in range(N)]
        return v, v
    if algo == "scin":
        return [n * b] * N, [n * b] * N
    # int formats, block 32 along the hidden axis: 1 payload byte per element and
    # one scale per block (float16: 2 bytes, e8m0: 1 byte).
    blocks_per_row = math.ceil(hidden / 32)
    if algo in ("scin:int8", "scin:mxint8"):
        scale = 2 if algo == "scin:int8" else 1
        v = n + rows * blocks_per_row * scale
        return [v] * N, [v] * N
    if algo == "two_shot:int8":
        blocks = chunks(rows * blocks_per_row, N)  # runs of whole blocks
        w = [bl * 32 + bl * 2 for bl in blocks]  # hidden is a multiple of 32 here
        up = [sum(w) - w[i] + (N - 1) * w[i] for i in range(N)]
        return up, up
    raise AssertionError(algo)


ALGOS = [
    "ring",
    "one_shot",
    "two_shot",
    "nvls",
    "scin",
    "scin:int8",
    "scin:mxint8",
    "two_shot:int8",
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(
    "model,tp,tokens,batch",
    [
        ("llama2-70b", 8, 2048, 1),  # prefill
        ("llama2-70b", 8, 1, 16),  # decode step, batch 16
        ("llama2-7b", 3, 37, 2),  # N not dividing n: uneven chunks
    ],
    ids=["70b-prefill2048", "70b-decode-b16", "7b-N3-odd"],
)
def test_model_traffic_matches_formula(algo, model, tp, tokens, batch):
    config = get_config(model)
    rows = batch * tokens
    n = rows * config.hidden_size
    report = model_traffic(config, tp=tp, collective=algo, tokens=tokens, batch=batch)
    up, down = per_call(algo, n=n, N=tp, rows=rows, hidden=config.hidden_size)
    calls = 2 * config.num_layers  # two All-Reduces per layer
    assert report.calls == calls
    assert {r.label for r in report.records} == {"attn_out", "mlp_out"}
    assert all(r.shape == (rows, config.hidden_size) for r in report.records)
    assert list(report.up) == [calls * v for v in up]
    assert list(report.down) == [calls * v for v in down]


def test_scin_70b_prefill_number():
    """The headline number, written out: 80 layers x 2 x 2048 x 8192 x 2 bytes per uplink."""
    report = model_traffic(get_config("llama2-70b"), tp=8, collective="scin", tokens=2048)
    assert report.up == (80 * 2 * 2048 * 8192 * 2,) * 8 == report.down
    assert report.up[0] == 5_368_709_120


def test_exact_counts_compute_dtype_and_tp1_moves_nothing():
    config = get_config("llama2-7b")
    exact = model_traffic(config, tp=4, collective="exact", tokens=5)
    assert exact.up == (32 * 2 * 5 * 4096 * 4,) * 4  # float32 partials, no wire cast
    assert model_traffic(config, tp=1, collective="scin", tokens=5).records == ()


def test_bad_arguments():
    config = get_config("llama2-7b")
    with pytest.raises(ValueError, match="tokens"):
        model_traffic(config, tp=8, collective="scin", tokens=0)
    with pytest.raises(ValueError, match="max_position"):
        model_traffic(config, tp=8, collective="scin", tokens=4097)
    with pytest.raises(ValueError, match="tp"):
        model_traffic(config, tp=0, collective="scin", tokens=1)
    with pytest.raises(ValueError, match="algorithm"):
        model_traffic(config, tp=8, collective="nope", tokens=1)


def test_cli_prefill_and_decode(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert (
        main(["--model", "llama2-70b", "--tp", "8", "--prefill", "2048", "--json", str(path)]) == 0
    )
    out = capsys.readouterr().out
    for algo in ALGOS:
        assert f"\n{algo} " in out
    doc = json.loads(path.read_text())
    rows = {r["collective"]: r for r in doc["results"]}
    assert set(rows) == set(ALGOS)
    scin = rows["scin"]
    assert scin["per_layer"]["up"] == [2 * 2048 * 8192 * 2] * 8
    assert scin["per_forward"]["up"] == [80 * 2 * 2048 * 8192 * 2] * 8
    assert rows["scin:int8"]["per_forward"]["up_scale"] == [80 * 2 * 2048 * 256 * 2] * 8
    assert main(["--model", "llama2-70b", "--decode", "--batch", "4", "--json", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert doc["phase"] == "decode" and doc["tokens"] == 1 and doc["batch"] == 4
    ring = {r["collective"]: r for r in doc["results"]}["ring"]
    assert ring["per_layer"]["up"] == [2 * 2 * 7 * 4 * 8192 // 8 * 2] * 8  # 2 x 2(N-1)/N n b
    assert main(["--collectives", "bogus", "--prefill", "8"]) == 2
