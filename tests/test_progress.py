"""scinjax._progress: a line per stage in logs, a tqdm bar on a terminal (issue 12, point 6)."""

import io

import pytest

from scinjax._progress import LineProgress, progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(bar, stages=3, steps=50):
    with bar:
        for s in range(stages):
            bar.set_description(f"stage {s}")
            for _ in range(steps):
                bar.update(1)
            bar.set_postfix_str(f"{s * 10} tok/s")


def test_non_tty_stderr_gets_one_line_per_stage_and_a_final_line(capsys):
    bar = progress(150, unit="step")  # stderr is pytest's capture: not a TTY
    assert isinstance(bar, LineProgress)
    _run(bar)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert len(lines) == 3 + 1, lines
    assert [ln.split(":")[0] for ln in lines] == ["stage 0", "stage 1", "stage 2", "stage 2"]
    assert lines[0].startswith("stage 0: 0/150 step [")
    assert lines[1].startswith("stage 1: 50/150 step [")
    assert lines[-1].startswith("stage 2: 150/150 step done [")
    assert lines[-1].endswith("20 tok/s")


def test_same_description_twice_prints_once(capsys):
    with progress(4, desc="load") as bar:
        bar.set_description("load")
        bar.update(4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("load: 0/4") and " done " in lines[1]


def test_close_twice_prints_one_final_line():
    out = io.StringIO()
    bar = progress(None, desc="x", file=out)
    bar.update(3)
    bar.close()
    bar.close()
    assert out.getvalue().count("\n") == 2 and "x: 3 step done" in out.getvalue()


def test_disabled_prints_nothing(capsys):
    tty = FakeTTY()
    for file in (None, tty):
        _run(progress(150, enabled=False, file=file))
    assert capsys.readouterr().err == "" and tty.getvalue() == ""


def test_tty_gets_a_redrawn_tqdm_bar():
    tty = FakeTTY()
    bar = progress(150, file=tty)
    assert not isinstance(bar, LineProgress)
    _run(bar)
    text = tty.getvalue()
    assert "\r" in text and "150/150" in text and "stage 2" in text


@pytest.mark.parametrize("total", [-1, 2.5, True, "10"])
def test_bad_total(total):
    with pytest.raises(ValueError, match="total"):
        progress(total)
