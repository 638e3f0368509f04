"""``scinjax train``: data-parallel x tensor-parallel training with emulated collectives.

DP ranks are emulated with ``jax.vmap(axis_name="dp")`` around the TP model (whose own
All-Reduces run under ``vmap(axis_name="tp")``), all in one jitted step:

1. each DP rank takes its micro-batch ``[B/dp, T+1]`` and computes loss and gradients
   through the TP model (forward All-Reduces: ``tp_collective``; cotangent All-Reduces:
   ``tp_backward``);
2. the DP gradient All-Reduce (``dp_collective``) sums the ranks' gradients, divided
   by ``dp`` (the mean);
3. the optax optimizer (AdamW by default) updates the replicated parameters.

Error feedback (EF21 / LoCo style, docs/training.md): rank i sends ``v_i = g_i + e_i``
and keeps ``e_i <- v_i - Q_up(v_i)``, the part of ``v_i`` its uplink quantizer drops,
to add to the next step's gradient. The downlink rounding at the switch is not
compensated. The data order and the initial weights depend only on the seed, so every
configuration of one seed sees the same batches from the same start.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import scinjax
from scinjax import Collective
from scinjax.formats import dequantize, quantize
from scinjax.models import build_model, get_config, random_weights

__all__ = ["TrainConfig", "Trainer", "train", "run_comparison", "synthetic_batches"]

DP_AXIS = "dp"
OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run (defaults: a tiny model from scratch on synthetic tokens)."""

    model: str = "tiny"
    dp: int = 1
    tp: int = 1
    tp_collective: str = "exact"
    tp_backward: str = "exact"
    dp_collective: str = "exact"
    error_feedback: bool = False
    sequence_parallel: bool = False  # Megatron SP in the TP model (RS + AG, docs/semantics.md)
    steps: int = 40
    batch: int = 8  # sequences per step, all DP ranks together
    seq_len: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0  # initial weights and data order

    def __post_init__(self):
        for name in ("dp", "tp", "steps", "batch", "seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.batch % self.dp:
            raise ValueError(
                f"batch={self.batch} sequences cannot be split over dp={self.dp} ranks; use a "
                f"multiple of {self.dp}"
            )
        tokens = self.batch // self.dp * self.seq_len
        if self.sequence_parallel and tokens % self.tp:
            raise ValueError(
                f"sequence_parallel splits each DP rank's {tokens} tokens (batch/dp * seq_len) "
                f"over tp={self.tp} ranks; use a seq_len or batch that makes it a multiple"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for name in ("tp_collective", "tp_backward", "dp_collective"):
            Collective.parse(getattr(self, name))  # ValueError naming a bad spec
        if not isinstance(self.error_feedback, bool):
            raise TypeError(f"error_feedback must be True or False, got {self.error_feedback!r}")
        up = Collective.parse(self.dp_collective).uplink
        if self.error_feedback and up is not None and up.stochastic:
            raise ValueError(
                f"error feedback needs the residual of the uplink quantizer, but "
                f"{self.dp_collective!r} rounds stochastically inside the collective; use a "
                "deterministic uplink format (e.g. scin:int8)"
            )

    @property
    def label(self) -> str:
        ef = "+ef" if self.error_feedback else ""
        sp = "+sp" if self.sequence_parallel else ""
        return (
            f"dp{self.dp}[{self.dp_collective}{ef}] x tp{self.tp}"
            f"[{self.tp_collective}/{self.tp_backward}{sp}]"
        )


def synthetic_batches(vocab: int, steps: int, batch: int, seq_len: int, seed: int):
    """Token ids ``[steps, batch, seq_len + 1]`` from a fixed sparse bigram chain.

    Each token has 4 likely successors (a learnable, low-entropy language); the chain
    and the sampled order depend only on ``seed``. Nothing is downloaded.
    """
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, (vocab, 4))
    probs = np.array([0.55, 0.25, 0.15, 0.05])
    out = np.empty((steps, batch, seq_len + 1), np.int32)
    tok = rng.integers(0, vocab, (steps, batch))
    choice = rng.choice(4, size=(steps, batch, seq_len + 1), p=probs)
    for t in range(seq_len + 1):
        out[:, :, t] = tok
        tok = succ[tok, choice[:, :, t]]
    return out


def _cross_entropy(logits, targets):
    """Mean next-token loss: logits [B, T, V] float32, targets [B, T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


class Trainer:
    """The jitted train step of one :class:`TrainConfig` and its initial state."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        config = get_config(cfg.model)
        model = self._model(config, cfg.seed)
        self.config = config
        self.module = model.module
        if cfg.tp_backward != "exact" or cfg.sequence_parallel:
            reducer = dataclasses.replace(
                model.module.reducer,
                backward=cfg.tp_backward,
                sequence_parallel=cfg.sequence_parallel,
            )
            self.module = model.module.clone(reducer=reducer)
        self.params = jax.tree.map(jnp.asarray, model.params)
        self.dp_coll = Collective.parse(cfg.dp_collective)
        self.tp_coll = Collective.parse(cfg.tp_collective)
        if cfg.optimizer == "adamw":
            self.opt = optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = optax.sgd(cfg.lr)
        self.step = jax.jit(self._step)

    def _model(self, config, seed: int):
        weights = random_weights(config, seed=seed)
        return build_model(config, weights, tp=self.cfg.tp, collective=self.cfg.tp_collective)

    def init_state(self, seed: int | None = None):
        """(params, optimizer state, error-feedback residual [dp, ...] per leaf).

        ``seed`` (default: the config's) draws the initial weights; the jitted step is
        shared by every seed (one compilation per configuration).
        """
        params = self.params
        if seed is not None and seed != self.cfg.seed:
            params = jax.tree.map(jnp.asarray, self._model(self.config, seed).params)
        residual = jax.tree.map(lambda p: jnp.zeros((self.cfg.dp,) + p.shape, p.dtype), params)
        return params, self.opt.init(params), residual

    def _stochastic(self) -> bool:
        return self.dp_coll.stochastic or self.tp_coll.stochastic

    def _rank_loss(self, params, tokens, key):
        """One DP rank: tokens [b, T+1] -> mean loss (the TP model inside)."""
        logits = self.module.apply(params, tokens[:, :-1], key)
        return _cross_entropy(logits, tokens[:, 1:])

    def _dp_reduce(self, grads, residual, key):
        """One DP rank's gradients -> the mean over ranks (and the new residual)."""
        dp = self.cfg.dp
        if dp == 1:
            return grads, residual
        sent = grads
        if self.cfg.error_feedback:
            sent = jax.tree.map(jnp.add, grads, residual)
            residual = jax.tree.map(self._uplink_error, sent)
        total = scinjax.allreduce(sent, DP_AXIS, self.dp_coll, key=key, label="dp_grad")
        return jax.tree.map(lambda g: g / dp, total), residual

    def _uplink_error(self, v):
        """``v - Q_up(v)``: what this rank's uplink quantizer drops (0 for a plain link)."""
        up = self.dp_coll.uplink
        if up is None:
            return jnp.zeros_like(v)
        return v - dequantize(quantize(v, up), v.dtype)

    def reduced_grads(self, params, residual, tokens, key):
        """tokens [dp, B/dp, T+1] -> (loss [dp], mean gradients, residual [dp, ...])."""

        def per_rank(toks, res, rank_key):
            tp_key = None if not self.tp_coll.stochastic else jax.random.fold_in(rank_key, 1)
            loss, grads = jax.value_and_grad(self._rank_loss)(params, toks, tp_key)
            dp_key = key if self.dp_coll.stochastic else None
            grads, res = self._dp_reduce(grads, res, dp_key)
            return loss, grads, res

        rank_keys = jax.random.split(key, self.cfg.dp)
        loss, grads, residual = jax.vmap(per_rank, axis_name=DP_AXIS)(tokens, residual, rank_keys)
        return loss, jax.tree.map(lambda g: g[0], grads), residual  # identical on DP ranks

    def _step(self, params, opt_state, residual, tokens, key):
        """tokens [dp, B/dp, T+1] -> (params, opt_state, residual, mean loss)."""
        loss, grads, residual = self.reduced_grads(params, residual, tokens, key)
        updates, opt_state = self.opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, residual, loss.mean()

    def data(self, seed: int | None = None):
        """[steps, dp, B/dp, T+1]: the same batches for every config of this seed."""
        c = self.cfg
        seed = c.seed if seed is None else seed
        raw = synthetic_batches(self.config.vocab_size, c.steps, c.batch, c.seq_len, seed)
        return raw.reshape(c.steps, c.dp, c.batch // c.dp, c.seq_len + 1)

    @functools.cached_property
    def traffic(self) -> scinjax.TrafficReport:
        """The ledger of one train step (abstract: nothing runs)."""
        params, opt_state, residual = self.init_state()
        c = self.cfg
        tokens = jax.ShapeDtypeStruct((c.dp, c.batch // c.dp, c.seq_len + 1), jnp.int32)
        return scinjax.count_traffic(
            self._step, params, opt_state, residual, tokens, jax.random.key(0)
        )


@functools.lru_cache(maxsize=8)
def _trainer(cfg: TrainConfig) -> Trainer:
    """One Trainer (one compiled step) per configuration, shared by its seeds."""
    return Trainer(cfg)


def link_bytes(report: scinjax.TrafficReport) -> dict:
    """Bytes per step on rank 0's up/down link, by label (tp layers vs dp_grad) and phase."""
    out: dict[str, dict[str, int]] = {}
    for r in report.records:
        group = "dp_grad" if (r.label or "").startswith("dp_grad") else "tp"
        name = f"{group}/{getattr(r, 'phase', 'forward')}"
        entry = out.setdefault(name, {"up": 0, "down": 0, "calls": 0, "n_ranks": r.n_ranks})
        entry["up"] += r.calls * r.up[0]
        entry["down"] += r.calls * r.down[0]
        entry["calls"] += r.calls
    return out


def train(cfg: TrainConfig, *, progress=None) -> dict:
    """Run one configuration; returns its loss curve, timings and bytes per step."""
    trainer = _trainer(dataclasses.replace(cfg, seed=0))
    params, opt_state, residual = trainer.init_state(cfg.seed)
    data = trainer.data(cfg.seed)
    base = jax.random.key(cfg.seed + 1_000_003)
    losses = []
    t0 = time.perf_counter()
    for s in range(cfg.steps):
        params, opt_state, residual, loss = trainer.step(
            params, opt_state, residual, jnp.asarray(data[s]), jax.random.fold_in(base, s)
        )
        losses.append(float(loss))
        if progress is not None:
            progress.update(1)
    seconds = time.perf_counter() - t0
    return {
        "label": cfg.label,
        "config": dataclasses.asdict(cfg),
        "losses": losses,
        "seconds": seconds,
        "bytes_per_step": link_bytes(trainer.traffic),
    }


def run_comparison(
    base: TrainConfig,
    variants: list[dict],
    seeds: list[int],
    out_dir: str | Path | None = None,
    *,
    progress=None,
) -> dict:
    """Train ``base`` with each variant's overrides, for every seed, on the same data.

    The first variant is the reference ("exact"); the summary gives each variant's final
    loss minus the reference's, mean and standard deviation over the seeds.
    """
    runs = []
    for v in variants:
        per_seed = [train(dataclasses.replace(base, seed=s, **v), progress=progress) for s in seeds]
        runs.append({"variant": v, "label": per_seed[0]["label"], "seeds": per_seed})
    ref_final = np.array([r["losses"][-1] for r in runs[0]["seeds"]])
    for run in runs:
        final = np.array([r["losses"][-1] for r in run["seeds"]])
        gap = final - ref_final
        run["final_loss_mean"] = float(final.mean())
        run["final_gap_mean"] = float(gap.mean())
        run["final_gap_std"] = float(gap.std(ddof=1)) if len(gap) > 1 else 0.0
        run["bytes_per_step"] = run["seeds"][0]["bytes_per_step"]
    result = {"seeds": list(seeds), "runs": runs}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text(json.dumps(result, indent=1))
        plot_curves(result, out / "train_loss.png")
    return result


def plot_curves(result: dict, path) -> None:
    """Loss per step (mean over seeds, band = min..max) and the gap to the first run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax, gap_ax = fig.subplots(1, 2)
    ref = np.array([r["losses"] for r in result["runs"][0]["seeds"]])
    for run in result["runs"]:
        curves = np.array([r["losses"] for r in run["seeds"]])
        steps = np.arange(1, curves.shape[1] + 1)
        (line,) = ax.plot(steps, curves.mean(0), label=run["label"])
        ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
        gap_ax.plot(steps, (curves - ref).mean(0), color=line.get_color(), label=run["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats)")
    ax.set_title(f"loss, mean over {len(result['seeds'])} seeds")
    gap_ax.set_xlabel("step")
    gap_ax.set_ylabel("loss - first run's loss")
    gap_ax.set_title("gap to the reference run")
    gap_ax.axhline(0.0, color="0.5", lw=0.8)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=8)
    fig.savefig(path, dpi=120)


def summary_table(result: dict) -> str:
    """One line per variant: final loss, gap vs the first run (mean +- std), bytes/step."""
    head = f"{'configuration':<58}{'final loss':>11}{'gap':>18}{'dp up B/step':>14}"
    lines = [head, "-" * len(head)]
    for run in result["runs"]:
        dp_bytes = sum(v["up"] for k, v in run["bytes_per_step"].items() if k.startswith("dp_"))
        gap = f"{run['final_gap_mean']:+.4f} +- {run['final_gap_std']:.4f}"
        lines.append(f"{run['label']:<58}{run['final_loss_mean']:>11.4f}{gap:>18}{dp_bytes:>14,}")
    return "\n".join(lines)


def variants_for(
    *, dp_collective: str, tp_collective: str, tp_backward: str, error_feedback: str
) -> list[dict]:
    """The exact reference first, then the requested collectives (EF off / on / both)."""
    if error_feedback not in ("off", "on", "both"):
        raise ValueError(f"error_feedback must be 'off', 'on' or 'both', got {error_feedback!r}")
    exact = dict(
        dp_collective="exact", tp_collective="exact", tp_backward="exact", error_feedback=False
    )
    asked = dict(dp_collective=dp_collective, tp_collective=tp_collective, tp_backward=tp_backward)
    efs = {"off": [False], "on": [True], "both": [False, True]}[error_feedback]
    out = [exact]
    for ef in efs:
        v = dict(asked, error_feedback=ef)
        if v != exact:
            out.append(v)
    return out


def report(
    base: TrainConfig,
    *,
    variants: list[dict],
    seeds: list[int],
    out_dir: str | Path | None,
    show_progress: bool = True,
) -> dict:
    """Run the comparison, print its table (and where the files went), return it."""
    from scinjax._progress import progress

    for v in variants:  # every configuration is validated before anything runs
        dataclasses.replace(base, **v)
    total = len(variants) * len(seeds) * base.steps
    with progress(total, desc="train", unit="step", enabled=show_progress) as bar:
        result = run_comparison(base, variants, seeds, out_dir, progress=bar)
    print(summary_table(result))
    if out_dir is not None:
        print(f"wrote {Path(out_dir) / 'train.json'} and {Path(out_dir) / 'train_loss.png'}")
    return result
