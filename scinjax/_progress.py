"""Progress for long-running commands: a tqdm bar on a terminal, plain lines in logs.

On a TTY this is tqdm. When the stream is not a terminal (CI, ``make demo > log``) a
redrawn bar would write one carriage-return frame per update into the log, so instead
one plain line is printed per stage (each new description) and one final line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["progress", "LineProgress"]


def progress(
    total: int | None,
    *,
    desc: str = "",
    unit: str = "step",
    enabled: bool = True,
    file: TextIO | None = None,
):
    """A tqdm-like progress object over ``total`` steps, written to ``file`` (stderr).

    Supports ``update(n=1)``, ``set_description(s)``, ``set_postfix_str(s)``, ``close()``
    and ``with``. A TTY gets a tqdm bar; anything else gets :class:`LineProgress` lines;
    ``enabled=False`` prints nothing.
    """
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"progress total must be an int >= 0 or None, got {total!r}")
    stream = sys.stderr if file is None else file
    if enabled and _isatty(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc=desc, unit=unit, file=stream, enabled=enabled)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """Non-TTY progress: one line per stage (description change) and one final line.

    A line reads ``"<desc>: <n>/<total> <unit> [<elapsed>s, <rate> <unit>/s] <postfix>"``;
    updates within a stage print nothing, so a log grows by one line per stage.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str = "",
        unit: str = "step",
        file: TextIO | None = None,
        enabled: bool = True,
    ):
        self.total = total
        self.n = 0
        self.desc = desc
        self.unit = unit
        self.postfix = ""
        self._file = file
        self._enabled = enabled
        self._start = time.perf_counter()
        self._closed = False
        if desc:
            self._emit()

    def _line(self, final: bool = False) -> str:
        elapsed = time.perf_counter() - self._start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        head = f"{self.desc}: " if self.desc else ""
        tail = f" {self.postfix}" if self.postfix else ""
        done = " done" if final else ""
        return f"{head}{count} {self.unit}{done} [{elapsed:.1f}s{rate}]{tail}"

    def _emit(self, final: bool = False) -> None:
        if not self._enabled:
            return
        stream = sys.stderr if self._file is None else self._file
        print(self._line(final), file=stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        """Start a new stage: prints one line when the description changes."""
        if desc != self.desc:
            self.desc = desc
            self._emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Extra text (e.g. tokens/s) shown on the next line; prints nothing itself."""
        self.postfix = s

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit(final=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
