"""DelayTracker on its own: the spec's constants, the bands at their boundaries, the window,
the log lines, and the trend's crossing of the warning ratio."""

from __future__ import annotations

import logging

import pytest

from sqlite_sync import (
    SYNC_TIME_ACCEPTABLE_MS,
    SYNC_TIME_CRITICAL_MS,
    SYNC_TIME_OPTIMAL_MS,
    SYNC_TIME_WARNING_MS,
    SYNC_TIME_WARNING_RATIO,
    SYNC_TIME_WINDOW,
    DelayAction,
    DelayStatus,
    DelayTracker,
    Recommendation,
)

BOUNDARIES = [
    (0.0, DelayStatus.OPTIMAL, DelayAction.NONE),
    (99.999, DelayStatus.OPTIMAL, DelayAction.NONE),
    (100.0, DelayStatus.ACCEPTABLE, DelayAction.NONE),
    (299.999, DelayStatus.ACCEPTABLE, DelayAction.NONE),
    (300.0, DelayStatus.WARNING, DelayAction.LOG_WARNING),
    (499.999, DelayStatus.WARNING, DelayAction.LOG_WARNING),
    (500.0, DelayStatus.SLOW, DelayAction.CONSIDER_ARCHIVING),
    (999.999, DelayStatus.SLOW, DelayAction.CONSIDER_ARCHIVING),
    (1000.0, DelayStatus.CRITICAL, DelayAction.SHOW_USER_WARNING),
    (60_000.0, DelayStatus.CRITICAL, DelayAction.SHOW_USER_WARNING),
]


def test_spec_constants() -> None:
    assert (SYNC_TIME_OPTIMAL_MS, SYNC_TIME_ACCEPTABLE_MS) == (100, 300)
    assert (SYNC_TIME_WARNING_MS, SYNC_TIME_CRITICAL_MS) == (500, 1000)
    assert (SYNC_TIME_WINDOW, SYNC_TIME_WARNING_RATIO) == (10, 0.3)


@pytest.mark.parametrize("ms,status,action", BOUNDARIES)
def test_bands_include_their_lower_bound(ms: float, status: DelayStatus, action: DelayAction) -> None:
    assert DelayTracker().classify(ms) == (status, action)


def test_each_band_logs_what_it_calls_for(caplog: pytest.LogCaptureFixture) -> None:
    tracker = DelayTracker()
    caplog.set_level(logging.DEBUG, logger="sqlite_sync")
    expected = {
        50.0: None,
        150.0: None,
        350.0: (logging.INFO, "Database sync noticeable: 350ms (>=300ms)"),
        700.0: (logging.INFO, "Database sync slow: 700ms - approaching critical threshold"),
        1000.0: (
            logging.WARNING,
            "DATABASE SYNC CRITICAL: Sync took 1000ms (>=1000ms). Consider archiving old data "
            "to Durable Objects.",
        ),
    }
    for ms, line in expected.items():
        caplog.clear()
        tracker = DelayTracker()  # a fresh window: no trend lines here
        tracker.record(ms)
        records = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert records == ([line] if line else []), ms


def test_trend_crossing_the_ratio_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    tracker = DelayTracker()
    caplog.set_level(logging.INFO, logger="sqlite_sync")
    for _ in range(7):
        assert tracker.record(50.0).trend.recommendation is Recommendation.NONE
    tracker.record(600.0)
    sample = tracker.record(600.0)
    assert sample.trend.recommendation is Recommendation.NONE  # 2 of 9: 22 %
    assert not [r for r in caplog.records if "TREND" in r.getMessage()]
    sample = tracker.record(700.0)  # 3 of 10: 30 %
    assert sample.trend.slow_share == 0.3
    assert sample.trend.recommendation is Recommendation.CONSIDER_ARCHIVING
    trend_lines = [r for r in caplog.records if "TREND" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in trend_lines] == [
        (
            logging.WARNING,
            "DATABASE SYNC TREND: 30% of the last 10 syncs took >=500ms (warning ratio 30%). "
            "Consider archiving old data.",
        )
    ]
    # Still 3 of 10 (a fast sample pushed out a fast one): no second line.
    tracker.record(50.0)
    assert len([r for r in caplog.records if "TREND" in r.getMessage()]) == 1
    # Critical syncs escalate it; the window keeps the last 10.
    for _ in range(3):
        sample = tracker.record(1500.0)
    assert len(sample.trend.samples_ms) == 10
    assert sample.trend.recommendation is Recommendation.MIGRATE_TO_DURABLE_OBJECT
    assert "Migrate this user to a Durable Object." in caplog.records[-1].getMessage()


def test_one_slow_sync_is_not_a_trend() -> None:
    sample = DelayTracker().record(5000.0)
    assert sample.trend.critical_share == 1.0
    assert sample.trend.recommendation is Recommendation.NONE
