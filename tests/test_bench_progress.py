"""bench's progress line: one line redrawn in place on a terminal, a line per stage in a
log, with the run, elapsed time and the time left estimated from the budget."""

import io

import pytest

from ssl_zoo import bench_progress
from ssl_zoo.bench_progress import EVALUATION_GUESS_SECONDS, MEASUREMENT_SECONDS, BenchProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """A clock the test moves by hand."""
    now = [1000.0]
    monkeypatch.setattr(bench_progress.time, "perf_counter", lambda: now[0])
    return now


def test_in_a_log_each_stage_is_one_line_with_the_time_left_from_the_budget(clock, capsys):
    log = io.StringIO()
    progress = BenchProgress(trainings=2, evaluations=3, budget_seconds=60, stream=log)
    progress.begin("training", "simclr_shapes")
    first = log.getvalue()
    budgeted = 2 * (60 + MEASUREMENT_SECONDS) + (3 + 1) * EVALUATION_GUESS_SECONDS  # runs, evaluations, report
    assert first.startswith("[bench] [") and "training run 1 of 2 (simclr_shapes) · 0:00 elapsed" in first
    assert f"~{int(budgeted) // 60}:{int(budgeted) % 60:02d} left" in first
    clock[0] += 100  # the first run took 100 s: the second is expected to take as long
    progress.end()
    progress.begin("training", "byol_shapes")
    assert "training run 2 of 2 (byol_shapes) · 1:40 elapsed" in log.getvalue().splitlines()[1]
    assert progress.seconds_left() == 100 + 3 * EVALUATION_GUESS_SECONDS + EVALUATION_GUESS_SECONDS  # + the report
    progress.say("a message")
    progress.close()
    assert capsys.readouterr().out.endswith("] a message\n")
    assert len(log.getvalue().splitlines()) == 2 and "\r" not in log.getvalue()  # one line per stage, nothing more


def test_on_a_terminal_the_line_is_redrawn_in_place():
    terminal = Terminal()
    progress = BenchProgress(trainings=1, evaluations=1, budget_seconds=None, stream=terminal)
    progress.begin("training", "quickstart")
    progress.close()
    drawn = terminal.getvalue()
    assert drawn.startswith("\r\033[K[bench] [") and "\n" not in drawn
    assert "time left known after the first run" in drawn  # --epochs: no budget to estimate from


def test_stages_done_by_an_earlier_bench_count_as_done(clock):
    progress = BenchProgress(trainings=2, evaluations=2, budget_seconds=10, stream=io.StringIO())
    progress.skip("training")
    progress.begin("training", "second")
    assert "training run 2 of 2" in progress.line() and "[####......" in progress.line()
    assert progress.seconds_left() == (10 + MEASUREMENT_SECONDS) + 3 * EVALUATION_GUESS_SECONDS
