"""epicdata.console's progress line: a rate and an ETA only once there is a rate."""

from __future__ import annotations

import io
import logging

import pytest

from epicdata.console import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_progress_line_after_a_slow_start_shows_no_rate_and_no_eta(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: the first line of the demo read `0.0 batches/s` with an ETA of hours: the
    # rate was counted from the start, and the first batch waited for the loader workers.
    clock, logger = FakeClock(), logging.getLogger("test.console.start")
    with caplog.at_level(logging.INFO, logger=logger.name):
        bar = Progress(100, label="train", unit="batches", clock=clock, logger=logger)
        clock.now += 40  # start-up: workers, CUDA, the first batch
        bar.update()
        assert _logged(caplog) == ["train: 1/100 batches (1.0%), elapsed 0:00:40"]
        for _ in range(30):  # then 1 batch a second
            clock.now += 1
            bar.update()
        bar.close()
    assert _logged(caplog)[1] == (
        "train: 31/100 batches (31.0%), 1.0 batches/s, elapsed 0:01:10, ETA 0:01:09"
    )


def test_a_progress_line_before_any_unit_has_no_rate() -> None:
    # A log record redraws the bar on a terminal, also before the first batch.
    clock, stream = FakeClock(), FakeTerminal()
    bar = Progress(10, label="validation", unit="batches", clock=clock, stream=stream)
    clock.now += 5
    assert bar.line() == "validation: 0/10 batches (0.0%), elapsed 0:00:05"
    bar.close()


def test_a_slow_rate_is_shown_in_significant_digits_not_as_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, logger = FakeClock(), logging.getLogger("test.console.slow")
    with caplog.at_level(logging.INFO, logger=logger.name):
        bar = Progress(None, label="epic-check", unit="shards", clock=clock, logger=logger)
        for _ in range(3):  # a shard every 30 s
            clock.now += 30
            bar.update()
        bar.close()
    lines = _logged(caplog)
    assert lines[-1] == "epic-check: 3 shards, 0.033 shards/s, elapsed 0:01:30"
    assert not any("0.0 " in line for line in lines), lines
