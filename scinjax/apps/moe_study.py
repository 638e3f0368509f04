"""The `scinjax moe-study` app: accuracy of quantized MoE dispatch/combine on a trained
tiny MoE LM.

    scinjax moe-study --steps 300 --json results/moe_study.json

1. Train :mod:`scinjax.models.moe_lm` (byte vocabulary) on the first 90% of the
   embedded English prose (``pydoc_data.topics``, CPython's own text; nothing is
   downloaded) with optax AdamW, the EP layers running ``dedup`` with fp32 links.
2. On windows of the held-out 10%, compare every variant ``ALGO:DISPATCH/COMBINE``
   (e.g. ``dysharp:bf16/int8``: in-switch summed combine quantized to int8) with the
   reference ``dedup:fp32/fp32`` on the same tokens and weights: mean KL(ref || variant)
   per token, top-1 agreement and the change of NLL, with per-window batch-means standard
   errors (:func:`scinjax.apps.study.stats.batch_means_se`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scinjax._progress import progress
from scinjax.apps.study.corpus import pydoc_prose
from scinjax.apps.study.stats import batch_means_se
from scinjax.models.moe_lm import MoELMConfig, forward, init_params, load_balance_loss
from scinjax.moe import EPConfig

__all__ = [
    "DEFAULT_VARIANTS",
    "REFERENCE",
    "measured_routing",
    "parse_variant",
    "report",
    "run_study",
    "train",
]

REFERENCE = "dedup:fp32/fp32"
DEFAULT_VARIANTS = (
    "all_to_all:bf16/bf16",
    "dedup:bf16/bf16",
    "dysharp:bf16/bf16",
    "dysharp:bf16/int8",
    "dysharp:bf16/mxint8",
    "dysharp:int8/bf16",
    "dysharp:mxfp8/bf16",
    "dysharp:mxfp8/int8",
    "all_to_all:mxfp8/int8",
)


def parse_variant(spec: str, n_experts: int) -> EPConfig:
    """``ALGO:DISPATCH/COMBINE`` (``ALGO:FMT`` for both) -> EPConfig."""
    alg, sep, fmts = spec.partition(":")
    if not sep or not fmts:
        raise ValueError(
            f"bad variant {spec!r}; expected ALGO:DISPATCH/COMBINE, e.g. dysharp:bf16/int8"
        )
    d, sep2, c = fmts.partition("/")
    return EPConfig(
        n_experts=n_experts, algorithm=alg, dispatch_format=d, combine_format=c if sep2 else d
    )


def _data(text: str):
    data = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def train(cfg: MoELMConfig, *, ranks, batch, seq, steps, lr, seed, show_progress=True, tp=None):
    """Train on random windows; returns (params, per-step losses). ``tp``: see ``forward``."""
    import optax

    train_data, _ = _data(pydoc_prose())
    ep = parse_variant(REFERENCE, cfg.n_experts)
    params = init_params(cfg, jax.random.key(seed))
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=0.01)
    state = opt.init(params)

    def loss_fn(p, tok):
        logits, routing = forward(p, tok[..., :-1], cfg, ep, tp=tp)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, tok[..., 1:, None], -1).mean()
        return nll + 0.01 * load_balance_loss(routing, cfg.n_experts), nll

    @jax.jit
    def step(p, s, tok):
        (_, nll), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tok)
        u, s = opt.update(g, s, p)
        return jax.tree.map(lambda a, b: a + b, p, u), s, nll

    rng = np.random.default_rng(seed)
    losses = []
    with progress(steps, desc="moe-study train", unit="step", enabled=show_progress) as bar:
        for _ in range(steps):
            starts = rng.integers(0, len(train_data) - seq - 1, ranks * batch)
            tok = np.stack([train_data[a : a + seq + 1] for a in starts])
            params, state, nll = step(params, state, jnp.asarray(tok.reshape(ranks, batch, -1)))
            losses.append(float(nll))
            bar.update(1)
    return params, losses


def _logprobs(params, windows, cfg, ep, ranks, tp=None):
    """Float32 log-probabilities ``[W, T, V]`` of the windows ``[W, T + 1]``."""
    fn = jax.jit(lambda p, tok: jax.nn.log_softmax(forward(p, tok, cfg, ep, tp=tp)[0]))
    out = []
    per = ranks * max(1, 4)
    for a in range(0, len(windows), per):
        chunk = windows[a : a + per, :-1]
        out.append(np.asarray(fn(params, jnp.asarray(chunk.reshape(ranks, -1, chunk.shape[-1])))))
    return np.concatenate([o.reshape(-1, *o.shape[-2:]) for o in out])


def run_study(
    *,
    variants=DEFAULT_VARIANTS,
    steps=300,
    ranks=4,
    batch=4,
    seq=128,
    windows=32,
    lr=3e-3,
    seed=0,
    cfg: MoELMConfig | None = None,
    tp=None,
    show_progress=True,
) -> dict:
    """Train, then score every variant against the reference. Returns a JSON-ready dict."""
    cfg = cfg or MoELMConfig()
    if windows % (ranks * 4):
        raise ValueError(f"windows={windows} must be a multiple of ranks * 4 = {ranks * 4}")
    start = time.perf_counter()
    params, losses = train(
        cfg,
        ranks=ranks,
        batch=batch,
        seq=seq,
        steps=steps,
        lr=lr,
        seed=seed,
        show_progress=show_progress,
        tp=tp,
    )
    train_s = time.perf_counter() - start
    _, held = _data(pydoc_prose())
    stride = (len(held) - seq - 1) // windows
    win = np.stack([held[i * stride : i * stride + seq + 1] for i in range(windows)])
    targets = win[:, 1:]
    ref = _logprobs(params, win, cfg, parse_variant(REFERENCE, cfg.n_experts), ranks, tp)
    ref_nll = -np.take_along_axis(ref, targets[..., None], -1)[..., 0]  # [W, T]
    rows = []
    with progress(
        len(variants), desc="moe-study eval", unit="variant", enabled=show_progress
    ) as bar:
        for spec in variants:
            lp = _logprobs(params, win, cfg, parse_variant(spec, cfg.n_experts), ranks, tp)
            p_ref = np.exp(ref.astype(np.float64))
            kl = np.sum(p_ref * (ref.astype(np.float64) - lp), axis=-1)  # [W, T]
            top1 = (ref.argmax(-1) == lp.argmax(-1)).astype(np.float64)
            dnll = -np.take_along_axis(lp, targets[..., None], -1)[..., 0] - ref_nll
            counts = np.full(windows, seq)
            row = dict(variant=spec)
            for name, v in (("kl", kl), ("top1", top1), ("dnll", dnll)):
                sums = v.sum(-1)
                row[name] = float(sums.sum() / counts.sum())
                row[name + "_se"] = batch_means_se(sums, counts)
            rows.append(row)
            bar.update(1)
    return dict(
        reference=REFERENCE,
        config=cfg.__dict__,
        ranks=ranks,
        attention="data parallel" if tp is None else f"tensor parallel ({tp})",
        train=dict(
            steps=steps,
            batch=batch,
            seq=seq,
            lr=lr,
            seed=seed,
            seconds=train_s,
            first_loss=losses[0],
            last_loss=float(np.mean(losses[-10:])),
        ),
        eval=dict(
            windows=windows,
            tokens_per_window=seq,
            ref_nll=float(ref_nll.mean()),
            ref_nll_se=batch_means_se(ref_nll.sum(-1), np.full(windows, seq)),
        ),
        variants=rows,
    )


def measured_routing(tokens: int, *, steps=200, seed=0, seq=128, layer=0, show_progress=True):
    """Expert ids ``[tokens, k]`` that the trained tiny MoE LM's router picks at ``layer``
    for consecutive held-out windows of ``seq`` bytes (token t of window w is row
    ``w * seq + t``). Trains first (``steps`` steps, as :func:`run_study`)."""
    cfg = MoELMConfig()
    params, _ = train(
        cfg,
        ranks=4,
        batch=4,
        seq=seq,
        steps=steps,
        lr=3e-3,
        seed=seed,
        show_progress=show_progress,
    )
    _, held = _data(pydoc_prose())
    n_win = -(-tokens // seq)
    if n_win * seq + 1 > len(held):
        raise ValueError(
            f"{tokens} tokens exceed the held-out text ({len(held)} bytes); ask for fewer"
        )
    win = np.stack([held[i * seq : i * seq + seq] for i in range(n_win)])
    ep = parse_variant(REFERENCE, cfg.n_experts)
    fn = jax.jit(lambda p, tok: forward(p, tok, cfg, ep)[1][0][layer])  # [1, B*T, k]
    out = [np.asarray(fn(params, jnp.asarray(win[a : a + 16][None]))) for a in range(0, n_win, 16)]
    return np.concatenate([o.reshape(-1, cfg.top_k) for o in out])[:tokens].astype(np.int32)


def format_table(result: dict) -> str:
    ev, tr = result["eval"], result["train"]
    lines = [
        f"tiny MoE LM, {result['ranks']} EP ranks, {result['attention']} attention, "
        f"trained {tr['steps']} steps (NLL "
        f"{tr['first_loss']:.2f} -> {tr['last_loss']:.2f} nats/byte); held-out "
        f"{ev['windows']} x {ev['tokens_per_window']} bytes, reference {result['reference']} "
        f"NLL {ev['ref_nll']:.3f} +- {ev['ref_nll_se']:.3f}",
        f"{'variant':<24}{'KL (nats/token)':>24}{'top-1 agreement':>22}{'dNLL':>24}",
    ]
    for r in result["variants"]:
        lines.append(
            f"{r['variant']:<24}{r['kl']:>14.3e} +- {r['kl_se']:.1e}"
            f"{100 * r['top1']:>12.2f}% +- {100 * r['top1_se']:.2f}"
            f"{r['dnll']:>14.2e} +- {r['dnll_se']:.1e}"
        )
    return "\n".join(lines)


def report(args) -> int:
    result = run_study(
        variants=tuple(v for v in args.variants.split(",") if v),
        steps=args.steps,
        ranks=args.ranks,
        windows=args.windows,
        seed=args.seed,
        tp=args.tp,
    )
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0
