"""The Python bands and trend against the worker's own Rust code (``examples/delay_bands``),
at every boundary and on the same series."""

from __future__ import annotations

import json
import subprocess

from conftest import ROOT

from sqlite_sync import DelayTracker

BOUNDARY_VALUES = [
    -1.0, 0.0, 0.001, 99.0, 99.5, 99.999, 99.9999999, 100.0, 100.000001, 150.0,
    299.999, 300.0, 300.001, 499.999, 500.0, 500.001, 999.999, 1000.0, 1000.001, 1e9,
]

SERIES = [
    [50.0] * 7 + [600.0, 600.0, 700.0, 50.0, 1500.0, 1500.0, 1500.0, 50.0],
    [499.999, 500.0, 499.999, 500.0, 999.999, 1000.0, 1000.0],
    [5000.0, 5000.0],
    [5000.0, 5000.0, 5000.0],
    [1000.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 1000.0, 1000.0],
    [300.0] * 12,
    [0.0, 499.0, 500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 500.0, 500.0, 0.0, 0.0],
]


def rust(values: list[float], series: list[list[float]]) -> dict:
    out = subprocess.run(
        ["cargo", "run", "-q", "--locked", "--example", "delay_bands"],
        cwd=ROOT,
        input=json.dumps({"ms": values, "series": series}),
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return json.loads(out.stdout)


def test_python_and_rust_agree() -> None:
    expected = rust(BOUNDARY_VALUES, SERIES)
    tracker = DelayTracker()
    bands = [[s.value, a.value] for s, a in map(tracker.classify, BOUNDARY_VALUES)]
    assert bands == expected["bands"]
    for series, rust_steps in zip(SERIES, expected["trends"], strict=True):
        tracker = DelayTracker()
        steps = []
        for ms in series:
            t = tracker.record(ms).trend
            steps.append(
                {
                    "recommendation": t.recommendation.value,
                    "slow_share": t.slow_share,
                    "critical_share": t.critical_share,
                }
            )
        assert steps == rust_steps, series
    # The series reach every recommendation, so agreement is not agreement on "none".
    seen = {step["recommendation"] for steps in expected["trends"] for step in steps}
    assert seen == {"none", "consider_archiving", "migrate_to_durable_object"}
