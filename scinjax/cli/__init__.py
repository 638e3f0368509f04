"""The ``scinjax`` command: one module per subcommand (``scinjax/cli/<name>.py``).

Each module only parses arguments and calls an app in :mod:`scinjax.apps`; the
modules are imported lazily so ``scinjax --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

_COMMANDS = {
    "study": ("scinjax.cli.study", "main", "accuracy study of in-network quantization"),
    "sweep": ("scinjax.cli.sweep", "main", "accuracy vs bytes over formats, algorithms and N"),
    "eval": ("scinjax.cli.eval", "main", "multiple-choice accuracy per collective"),
    "traffic": ("scinjax.cli.traffic", "main", "bytes per link of full-size models"),
    "timing": ("scinjax.cli.timing", "main", "All-Reduce latency vs message size"),
    "e2e": ("scinjax.cli.e2e", "main", "LLaMA-2 TTFT / TPOT per algorithm"),
    "moe-traffic": ("scinjax.cli.moe_traffic", "main", "MoE dispatch/combine bytes and time"),
    "moe-study": ("scinjax.cli.moe_study", "main", "accuracy of quantized MoE dispatch/combine"),
    "train": ("scinjax.cli.train", "main", "DP x TP training with emulated collectives"),
}


def _usage() -> str:
    lines = ["usage: scinjax COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in _COMMANDS.items()]
    lines.append("\n`scinjax COMMAND --help` lists a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"scinjax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = _COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
