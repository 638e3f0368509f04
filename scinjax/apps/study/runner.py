"""The study runner: every variant on the same weights and token windows.

Variants differ only in the All-Reduce of the two row-parallel projections per
layer (or per call site, with a policy). The ``exact`` variant (fixed-order
float32 sum of float32 partials, no wire cast) is the reference of every
metric; its logits are computed once per batch of windows and reused by every
variant. Stochastic variants run once per seed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

from scinjax._progress import progress as progress_bar

from . import metrics
from .corpus import Corpus, check_length, default_corpus, scoring_windows
from .stats import VariantStats
from .variants import REFERENCE, VARIANT_SETS, Variant, parse_variants

__all__ = ["DEFAULT_VARIANTS", "run_study", "wire_traffic", "versions"]

DEFAULT_VARIANTS = VARIANT_SETS["default"]

_VERSIONED = ("jax", "jaxlib", "flax", "numpy", "ml_dtypes", "gguf", "tokenizers", "scinjax")


def versions() -> dict:
    """Library versions that decide the bits of a run (for the JSON)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import jax

        out["jax_backend"] = jax.default_backend()
    except Exception:  # noqa: BLE001 - informational only
        out["jax_backend"] = None
    return out


def wire_traffic(model, n_tokens: int) -> dict:
    """Bytes on the wire of ``model`` (a ``LoadedModel``) for a forward pass of ``n_tokens``.

    From the traffic ledger (every All-Reduce of the forward found by abstract
    tracing): bytes per element of one All-Reduce and bytes per token per link for
    the whole forward, on the busiest link (max over ranks) in each direction.
    """
    from scinjax.models import model_traffic

    keys = ("up_per_elem", "down_per_elem", "up_per_token", "down_per_token")
    if model.tp == 1:  # one rank: nothing on the wire
        return dict.fromkeys(keys, 0.0)
    report = model_traffic(
        model.config,
        tp=model.tp,
        collective=model.collective,
        tokens=n_tokens,
        wire_dtype=str(model.wire_dtype),
        compute_dtype=str(model.compute_dtype),
    )
    elements = sum(r.elements * r.calls for r in report.records)
    up, down = max(report.up), max(report.down)
    return dict(
        zip(keys, (up / elements, down / elements, up / n_tokens, down / n_tokens), strict=True)
    )


@dataclasses.dataclass
class _Run:
    """One (variant, seed): its model, its key, what it accumulated."""

    variant: Variant
    seed: int | None
    model: object
    stats: VariantStats = dataclasses.field(default_factory=VariantStats)
    generated: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.variant.name if self.seed is None else f"{self.variant.name}#seed={self.seed}"

    def key(self, index: int):
        import jax

        if self.seed is None:
            return None
        return jax.random.fold_in(jax.random.key(self.seed), index)


def _prompt_windows(n_windows: int, prompts: int) -> list[int]:
    """Indices of the windows whose first tokens are the greedy prompts (evenly spread)."""
    if prompts == 0:
        return []
    return sorted({int(round(k * (n_windows - 1) / max(prompts - 1, 1))) for k in range(prompts)})


def run_study(
    *,
    model=None,
    loaded=None,
    tp: int = 8,
    variants: Sequence = DEFAULT_VARIANTS,
    corpus: Corpus | None = None,
    ctx: int = 256,
    tokens: int | None = 2048,
    batch: int = 4,
    prompts: int = 4,
    prompt_len: int = 16,
    gen_tokens: int = 16,
    wire_dtype: str = "bfloat16",
    weights_dtype: str = "float32",
    seeds: Sequence[int] = (0,),
    attribution: bool = False,
    progress: bool = True,
) -> dict:
    """Run every variant on the same windows; ``{"settings", "versions", "rows", "kl"}``.

    ``variants``: spec strings (``scin:int8``, ``scin:int8+order=pairwise``,
    ``scin:int8@mlp_out``) or ``Collective``/``CallPolicy`` objects; ``exact`` is
    always run first, as the reference. ``loaded``: a ``(config, weights, tokenizer)``
    triple (skips loading ``model``). ``weights_dtype``: storage of the weights
    (bfloat16/float16 halve their memory; activations stay float32); a model this call
    loads itself is read lazily, tensor by tensor. ``tokens``: budget of scored tokens
    (None: the whole corpus). ``seeds``: the PRNG seeds of stochastic variants (one run each).
    Returns rows of :meth:`VariantStats.summary` keys plus traffic and settings; ``kl``
    maps each run to its per-token KL values (float32). ``attribution``: also the
    per-call-site error of every run on the first window (:mod:`.attribution`), under
    ``"attribution"``.
    """
    from scinjax.models import build_model

    t_start = time.perf_counter()
    parsed = parse_variants(variants)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one integer")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if prompts < 0 or gen_tokens < 0 or prompt_len < 1:
        raise ValueError("prompts and gen_tokens must be >= 0 and prompt_len >= 1")
    corpus = corpus or default_corpus()
    # Byte-level tokenizers give at most one token per UTF-8 byte: a cheap early check.
    check_length(len(corpus.text.encode("utf-8")), ctx=ctx, tokens=tokens, unit="UTF-8 bytes")
    own = loaded is None  # loaded here: read lazily and hand the arrays over to the model
    if own:
        from scinjax.models import load_weights

        loaded = load_weights(model, dtype=weights_dtype, lazy=True)
    config, weights, tok = loaded
    if ctx > config.max_position or prompt_len + gen_tokens > config.max_position:
        raise ValueError(
            f"--ctx {ctx} or prompt+generation {prompt_len + gen_tokens} exceeds the model's "
            f"max_position {config.max_position}"
        )
    ids = tok.encode(corpus.text)
    win = scoring_windows(ids, ctx=ctx, tokens=tokens)
    first, n_win = win.first, win.ids.shape[0]
    prompt_ids = [win.ids[k, :prompt_len] for k in _prompt_windows(n_win, prompts)]

    base = build_model(
        config,
        weights,
        tp=tp,
        collective=REFERENCE,
        wire_dtype=wire_dtype,
        tokenizer=tok,
        weights_dtype=weights_dtype,
        consume_weights=own,
    )
    runs: list[_Run] = []
    for v in parsed:
        m = base if v.name == REFERENCE else base.with_collective(v.spec, wire_dtype=wire_dtype)
        for seed in seeds if v.stochastic else (None,):
            runs.append(_Run(variant=v, seed=seed, model=m))
    t_load = time.perf_counter() - t_start

    n_batches = -(-n_win // batch)
    bar = progress_bar(n_batches * len(runs), desc="study", unit="pass", enabled=progress)
    done_tokens, t_loop = 0, time.perf_counter()
    for b in range(n_batches):
        chunk = win.ids[b * batch : (b + 1) * batch]
        real = chunk.shape[0]
        if real < batch:  # keep one shape (no recompile): pad with repeats
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        targets = chunk[:real, first + 1 :]
        ref_logits = ref_logp = None
        for run in runs:
            bar.set_description(f"{run.name:<18} windows {b * batch + 1}-{b * batch + real}")
            t0 = time.perf_counter()
            out = np.asarray(run.model.forward(chunk, key=run.key(b)))[:real, first:-1]
            run.seconds += time.perf_counter() - t0
            if ref_logits is None:  # the reference runs first
                ref_logits = out
                ref_logp = [metrics.log_softmax(x) for x in out]
            for w in range(real):
                run.stats.add_window(ref_logits[w], ref_logp[w], out[w], targets[w])
            bar.update(1)
        done_tokens += real * win.ctx
        rate = done_tokens * len(runs) / max(time.perf_counter() - t_loop, 1e-9)
        bar.set_postfix_str(f"{rate:,.0f} tok/s")

    for run in runs:
        for k, p in enumerate(prompt_ids):
            t0 = time.perf_counter()
            run.generated.append(run.model.greedy(p, gen_tokens, key=run.key(10**6 + k)))
            run.seconds += time.perf_counter() - t0
    bar.close()

    sites = {}
    if attribution and tp > 1:
        from .attribution import attribute, exact_sites

        first_window = win.ids[:1]
        exact = exact_sites(base, first_window)
        for run in runs[1:]:
            sites[run.name] = attribute(run.model, first_window, key=run.key(0), exact=exact)

    reference = runs[0]
    rows = []
    for run in runs:
        agree = [
            metrics.tokens_until_divergence(r, g)
            for r, g in zip(reference.generated, run.generated, strict=True)
        ]
        traffic = wire_traffic(run.model, win.ctx)
        rows.append(
            {
                "variant": run.variant.name,
                "seed": run.seed,
                **run.variant.describe(),
                **run.stats.summary(),
                "gen_agree_mean": float(np.mean(agree)) if agree else float("nan"),
                "gen_agree_min": int(min(agree)) if agree else 0,
                "gen_tokens": gen_tokens,
                "up_bytes_per_elem": traffic["up_per_elem"],
                "down_bytes_per_elem": traffic["down_per_elem"],
                "wire_bytes_per_elem": traffic["up_per_elem"] + traffic["down_per_elem"],
                "up_bytes_per_token": traffic["up_per_token"],
                "down_bytes_per_token": traffic["down_per_token"],
                "seconds": run.seconds,
            }
        )
    settings = {
        "model": config.name,
        "tp": tp,
        "wire_dtype": wire_dtype,
        "compute_dtype": str(base.compute_dtype),
        "weights_dtype": weights_dtype,
        "text": corpus.source,
        "text_tokens": len(ids),
        "ctx": win.ctx,
        "scored_from": first,
        "windows": int(n_win),
        "tokens_budget": tokens,
        "scored_tokens": win.scored_tokens,
        "batch": batch,
        "prompts": len(prompt_ids),
        "prompt_len": prompt_len,
        "gen_tokens": gen_tokens,
        "seeds": list(seeds),
        "variants": [v.name for v in parsed],
        "reference": REFERENCE,
        "se_estimator": "per-window batch means (ratio estimator), windows independent",
        "load_seconds": t_load,
        "total_seconds": time.perf_counter() - t_start,
    }
    return {
        "settings": settings,
        "versions": versions(),
        "rows": rows,
        "kl": {run.name: run.stats.kl_values() for run in runs},
        "attribution": sites,
    }
