"""`kdrun bench --stacked`'s arithmetic: the students' seconds per launcher, the ratios and Amdahl's bound."""

from __future__ import annotations

import pytest

from kdrun.bench import stacked


def distilled(seconds: float, members: int | None = None) -> dict:
    row = {"seconds": seconds, "test_acc": 0.5}
    if members:
        row["stacked"] = members
    return {"phases": {"distilled": row}}


def test_students_seconds_count_a_stacked_pass_once_and_solo_phases_each():
    assert stacked.students_seconds("sequential", [distilled(1.0), distilled(2.0)]) == pytest.approx(3.0)
    stack = [distilled(1.5, 3)] * 3 + [distilled(0.7)]  # three members record the one pass; one job trained alone
    assert stacked.students_seconds("stacked", stack) == pytest.approx(2.2)
    assert stacked.students_seconds("joblib", stack) is None  # its jobs overlap: not separable


def test_bound_is_the_speed_up_if_the_students_took_no_time():
    line = stacked.bound_line({"cold": 24.0, "warm": 16.0, "students": 6.0})
    assert "1.33x (cold)" in line and "1.60x (warm)" in line and "10.0s" in line


def test_report_prints_every_row_with_ratios_against_sequential(capsys):
    rows = [{"student": "mlp", "launcher": "sequential", "cold": 20.0, "warm": 10.0, "students": 8.0, "test_acc": [0.5, 0.6]},
            {"student": "mlp", "launcher": "stacked", "cold": 16.0, "warm": 4.0, "students": 2.0, "test_acc": [0.5, 0.6]}]
    stacked.report(rows, "test data", "some CPU")
    out = capsys.readouterr().out
    assert "1.25x" in out and "2.50x" in out and "4.00x" in out and "some CPU" in out
    assert "at most 1.67x (cold) / 5.00x (warm)" in out
