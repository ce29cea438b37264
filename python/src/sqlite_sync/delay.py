"""Delay-based sync thresholds, bands, actions and trend, exactly as the worker grades them.

The worker's rules (``src/delay.rs``, ``src/trend.rs``):

* each band includes its lower bound: ``< 100`` optimal, ``< 300`` acceptable, ``< 500``
  warning, ``< 1000`` slow, else critical (so 100 ms is acceptable and 1000 ms critical);
* the trend keeps the last ``SYNC_TIME_WINDOW`` samples; with at least three of them, a share
  of samples at or above ``SYNC_TIME_CRITICAL_MS`` reaching ``SYNC_TIME_WARNING_RATIO``
  recommends a Durable Object, else a share at or above ``SYNC_TIME_WARNING_MS`` reaching it
  recommends archiving.

A test in ``make test`` runs the worker's own code on the same values and compares.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

# The spec's delay thresholds (validated by the POC).
SYNC_TIME_OPTIMAL_MS = 100  # feels instant
SYNC_TIME_ACCEPTABLE_MS = 300  # still fine
SYNC_TIME_WARNING_MS = 500  # log warning
SYNC_TIME_CRITICAL_MS = 1000  # show user warning

# Trend detection.
SYNC_TIME_WINDOW = 10  # number of recent syncs to track
SYNC_TIME_WARNING_RATIO = 0.3  # warn if 30% of recent syncs are slow

# Fewest samples before a trend may recommend anything (one slow sync is not a trend).
MIN_SAMPLES = 3

logger = logging.getLogger("sqlite_sync")


class DelayStatus(str, Enum):
    """How a measured delay feels to the user (the worker's ``status`` strings)."""

    OPTIMAL = "optimal"
    ACCEPTABLE = "acceptable"
    WARNING = "warning"
    SLOW = "slow"
    CRITICAL = "critical"


class DelayAction(str, Enum):
    """What each band asks for (the worker's ``action`` strings)."""

    NONE = "none"
    LOG_WARNING = "log_warning"
    CONSIDER_ARCHIVING = "consider_archiving"
    SHOW_USER_WARNING = "show_user_warning"


class Recommendation(str, Enum):
    """What the recent delays suggest (the worker's ``trend.recommendation`` strings)."""

    NONE = "none"
    CONSIDER_ARCHIVING = "consider_archiving"
    MIGRATE_TO_DURABLE_OBJECT = "migrate_to_durable_object"


@dataclass(frozen=True)
class Thresholds:
    """Band boundaries in milliseconds; the defaults are the spec's."""

    optimal_ms: float = SYNC_TIME_OPTIMAL_MS
    acceptable_ms: float = SYNC_TIME_ACCEPTABLE_MS
    warning_ms: float = SYNC_TIME_WARNING_MS
    critical_ms: float = SYNC_TIME_CRITICAL_MS

    def classify(self, ms: float) -> tuple[DelayStatus, DelayAction]:
        """The band of ``ms`` and its action; each band includes its lower bound."""
        if ms < self.optimal_ms:
            return DelayStatus.OPTIMAL, DelayAction.NONE
        if ms < self.acceptable_ms:
            return DelayStatus.ACCEPTABLE, DelayAction.NONE
        if ms < self.warning_ms:
            return DelayStatus.WARNING, DelayAction.LOG_WARNING
        if ms < self.critical_ms:
            return DelayStatus.SLOW, DelayAction.CONSIDER_ARCHIVING
        return DelayStatus.CRITICAL, DelayAction.SHOW_USER_WARNING


def round2(x: float) -> float:
    """Two decimals, rounding halves away from zero (as the worker's ``round2``)."""
    scaled = x * 100.0
    whole = float(int(scaled))
    if abs(scaled - whole) >= 0.5:
        whole += 1.0 if scaled > 0 else -1.0
    return whole / 100.0


@dataclass(frozen=True)
class Trend:
    """The recent samples and what they imply (the worker's ``trend`` object)."""

    window: int
    samples_ms: tuple[float, ...]
    slow_share: float
    critical_share: float
    warning_ratio: float
    recommendation: Recommendation


@dataclass(frozen=True)
class Sample:
    """One recorded sync: its delay, band, action and the trend including it."""

    ms: float
    status: DelayStatus
    action: DelayAction
    trend: Trend


def _now_ms() -> float:
    return time.perf_counter() * 1000.0


@dataclass
class DelayTracker:
    """Records sync times, grades each one and logs as the spec's ``database.py`` sketch does.

    ``clock_ms`` returns a monotonic time in milliseconds; tests inject their own.
    """

    thresholds: Thresholds = field(default_factory=Thresholds)
    window: int = SYNC_TIME_WINDOW
    warning_ratio: float = SYNC_TIME_WARNING_RATIO
    clock_ms: Callable[[], float] = _now_ms
    log: logging.Logger = logger
    _recent: deque[float] = field(init=False)
    _last: Recommendation = field(init=False, default=Recommendation.NONE)

    def __post_init__(self) -> None:
        self._recent = deque(maxlen=max(1, self.window))

    def classify(self, ms: float) -> tuple[DelayStatus, DelayAction]:
        """The worker's band and action for ``ms``."""
        return self.thresholds.classify(ms)

    def trend(self) -> Trend:
        """The trend over the samples recorded so far."""
        samples = tuple(self._recent)
        n = len(samples)
        slow = sum(1 for ms in samples if ms >= self.thresholds.warning_ms) / n if n else 0.0
        critical = (
            sum(1 for ms in samples if ms >= self.thresholds.critical_ms) / n if n else 0.0
        )
        enough = n >= MIN_SAMPLES
        if enough and critical >= self.warning_ratio:
            recommendation = Recommendation.MIGRATE_TO_DURABLE_OBJECT
        elif enough and slow >= self.warning_ratio:
            recommendation = Recommendation.CONSIDER_ARCHIVING
        else:
            recommendation = Recommendation.NONE
        return Trend(
            window=self.window,
            samples_ms=samples,
            slow_share=round2(slow),
            critical_share=round2(critical),
            warning_ratio=self.warning_ratio,
            recommendation=recommendation,
        )

    def record(self, elapsed_ms: float, what: str = "") -> Sample:
        """Adds one sync time, logs what its band and the trend call for, and grades it."""
        self._recent.append(elapsed_ms)
        status, action = self.classify(elapsed_ms)
        t = self.thresholds
        tag = f" [{what}]" if what else ""
        if action is DelayAction.SHOW_USER_WARNING:
            self.log.warning(
                f"DATABASE SYNC CRITICAL: Sync took {elapsed_ms:.0f}ms "
                f"(>={t.critical_ms:.0f}ms). Consider archiving old data to Durable Objects.{tag}"
            )
        elif action is DelayAction.CONSIDER_ARCHIVING:
            self.log.info(
                f"Database sync slow: {elapsed_ms:.0f}ms - approaching critical threshold{tag}"
            )
        elif action is DelayAction.LOG_WARNING:
            self.log.info(
                f"Database sync noticeable: {elapsed_ms:.0f}ms (>={t.acceptable_ms:.0f}ms){tag}"
            )
        trend = self.trend()
        if trend.recommendation is not self._last:
            self._log_trend(trend)
            self._last = trend.recommendation
        return Sample(ms=elapsed_ms, status=status, action=action, trend=trend)

    def _log_trend(self, trend: Trend) -> None:
        n = len(trend.samples_ms)
        if trend.recommendation is Recommendation.NONE:
            self.log.info(
                f"Database sync trend back to normal: under {self.warning_ratio:.0%} of the "
                f"last {n} syncs were slow"
            )
            return
        critical = trend.recommendation is Recommendation.MIGRATE_TO_DURABLE_OBJECT
        limit = self.thresholds.critical_ms if critical else self.thresholds.warning_ms
        share = trend.critical_share if critical else trend.slow_share
        advice = (
            "Migrate this user to a Durable Object."
            if critical
            else "Consider archiving old data."
        )
        self.log.warning(
            f"DATABASE SYNC TREND: {share:.0%} of the last {n} syncs took >={limit:.0f}ms "
            f"(warning ratio {self.warning_ratio:.0%}). {advice}"
        )
