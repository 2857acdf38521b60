"""Progress in a log file or CI is a few plain lines with the time left, not bar redraws."""

from __future__ import annotations

import io

import pytest

from trainer.progress import LineProgress, duration, progress


def test_a_log_gets_lines_with_the_time_left_and_no_redraws() -> None:
    stream = io.StringIO()
    bar = LineProgress(range(4), None, "align lfw", every_s=0.0, stream=stream)
    bar.set_postfix(loss="0.5")
    assert list(bar) == [0, 1, 2, 3]
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "align lfw: started"
    assert "1/4" in lines[1]
    assert "left" in lines[1]
    assert "(loss 0.5)" in lines[1]
    assert lines[-1].startswith("align lfw: done: 4/4 in ")


def test_a_quiet_interval_prints_only_start_and_end() -> None:
    stream = io.StringIO()
    bar: LineProgress[int] = LineProgress(None, 1000, "train", every_s=3600.0, stream=stream)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    bar.close()  # closing twice writes once
    assert len(stream.getvalue().splitlines()) == 2


def test_off_a_terminal_progress_is_lines_and_step_bars_are_silent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert isinstance(progress(range(3), desc="align"), LineProgress)  # stderr is captured
    assert list(progress(range(3), desc="steps", terminal_only=True)) == [0, 1, 2]
    list(progress(range(3), desc="hidden", disable=True))
    err = capsys.readouterr().err
    assert "steps" not in err
    assert "hidden" not in err


@pytest.mark.parametrize(
    ("seconds", "text"), [(42, "42 s"), (210, "3.5 min"), (4320, "72.0 min"), (7200, "2.0 h")]
)
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert duration(seconds) == text
