"""One progress line over a whole ``bench`` job, on stderr: the stage (training run k of
n, evaluation k of n, the report), the time elapsed and the time left.

On a terminal it is one line redrawn in place (``\\r``) every second; elsewhere (a log
file, CI) one line per stage, so that logs are not flooded. The time left is estimated
from the budget (runs x budget) and a guess per evaluation until stages have been timed,
then from the timed stages.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# Until one is timed: a training run takes its budget and the measurement of its speed
# before it (a few seconds of steps), an evaluation about this long (the default bench's
# take 10-20 s on 2 CPU cores).
MEASUREMENT_SECONDS = 10.0
EVALUATION_GUESS_SECONDS = 15.0
STAGES = ("training", "evaluation", "report")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class BenchProgress:
    def __init__(self, trainings: int, evaluations: int, budget_seconds: float | None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.on_terminal = self.stream.isatty()
        self.budget_seconds = budget_seconds
        self.counts = {"training": trainings, "evaluation": evaluations, "report": 1}
        self.timed: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.finished = dict.fromkeys(STAGES, 0)  # timed, or skipped (done by an earlier bench)
        self.started = time.perf_counter()
        self.stage, self.label, self.stage_started = "", "", self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --------------------------------------------------------------------- stages

    def begin(self, stage: str, label: str = "") -> None:
        """Stage ``stage`` ("training", "evaluation" or "report") of ``label`` starts."""
        with self._lock:
            self.stage, self.label, self.stage_started = stage, label, time.perf_counter()
        self._draw(new_stage=True)
        if self.on_terminal and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def end(self) -> None:
        """The current stage finished: its time informs the estimate of the stages left."""
        with self._lock:
            self.timed[self.stage].append(time.perf_counter() - self.stage_started)
            self.finished[self.stage] += 1

    def skip(self, stage: str) -> None:
        """A stage done by an earlier bench (``--resume``): counted as done, not timed."""
        with self._lock:
            self.finished[stage] += 1

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.on_terminal:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def say(self, message: str) -> None:
        """A message on stdout; on a terminal, the progress line is cleared and redrawn under it."""
        with self._lock:
            if self.on_terminal:
                self.stream.write("\r\033[K")
                self.stream.flush()
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
        if self.on_terminal and self.stage:
            self._draw()

    # --------------------------------------------------------------------- estimate

    def _stage_estimate(self, stage: str) -> float | None:
        if self.timed[stage]:
            return sum(self.timed[stage]) / len(self.timed[stage])
        if stage == "training":
            return None if self.budget_seconds is None else self.budget_seconds + MEASUREMENT_SECONDS
        return EVALUATION_GUESS_SECONDS  # an evaluation, or the report (its t-SNE maps and plots)

    def seconds_left(self) -> float | None:
        """Estimated seconds to the end; None while unknown (--epochs, before the first run ends)."""
        left = 0.0
        for stage in STAGES:
            remaining = self.counts[stage] - self.finished[stage]
            if remaining <= 0:
                continue
            estimate = self._stage_estimate(stage)
            if estimate is None:
                return None
            left += remaining * estimate
            if stage == self.stage:  # the current one is partly done
                left -= min(time.perf_counter() - self.stage_started, estimate)
        return left

    def line(self) -> str:
        done, total = sum(self.finished.values()), sum(self.counts.values())
        number = self.finished[self.stage] + 1
        what = {"training": f"training run {number} of {self.counts['training']}",
                "evaluation": f"evaluation {number} of {self.counts['evaluation']}",
                "report": "writing the report"}[self.stage]
        left = self.seconds_left()
        eta = f"~{_clock(left)} left" if left is not None else "time left known after the first run"
        filled = round(20 * done / max(total, 1))
        bar = "#" * filled + "." * (20 - filled)
        label = f" ({self.label})" if self.label else ""
        return f"[bench] [{bar}] {what}{label} · {_clock(time.perf_counter() - self.started)} elapsed · {eta}"

    # --------------------------------------------------------------------- output

    def _draw(self, new_stage: bool = False) -> None:
        with self._lock:
            if self.on_terminal:
                self.stream.write("\r\033[K" + self.line())
            elif new_stage:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._draw()
