"""Issue 11's table as ``make bench-scale`` prints it: rows picked by name, goals compared
run by run, rows not measured said so. Values are made up; nothing is timed."""

from __future__ import annotations

import pytest

from bench.scale_table import GROUPS, ROWS, Goal, Row, groups_of, line, select_rows, table, verdict

SPECS = {spec.key: spec for spec in ROWS}


def test_every_row_belongs_to_a_measurement_and_keys_are_unique():
    assert len(SPECS) == len(ROWS)
    assert {spec.group for spec in ROWS} == set(GROUPS)


def test_rows_are_picked_by_key_or_group_and_kept_in_the_tables_order():
    picked = select_rows(["waiting", "post_1k"], skip=["waiting_uss"])

    assert [spec.key for spec in picked] == ["post_1k", "waiting_runs", "waiting_unacked"]
    assert groups_of(picked) == ["intake", "waiting"]
    assert select_rows() == list(ROWS)
    assert "makespan" not in groups_of(select_rows(skip=["makespan"]))


def test_an_unknown_row_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown row.*posts.*post_1k"):
        select_rows(["posts"])


def test_an_upper_bound_holds_only_when_every_run_is_within_it():
    row = Row(SPECS["post_10k"], values=[1.2, 1.9, 2.0])
    assert verdict(row, runs=3) == "**met**"

    row.values.append(2.01)
    assert verdict(row, runs=4) == "not met"


def test_a_lower_bound_holds_only_when_every_run_reaches_it():
    assert Goal(0.98, at_most=False).met(0.98)
    assert verdict(Row(SPECS["create_share"], values=[0.99, 0.985, 0.98]), 3) == "**met**"
    assert verdict(Row(SPECS["create_share"], values=[0.99, 0.97, 1.0]), 3) == "not met"


def test_a_row_without_a_goal_is_shown_without_a_verdict():
    row = Row(SPECS["waiting_uss"], values=[500 * 2**20, 520 * 2**20])

    assert verdict(row, 2) == "—"
    assert "500 MiB · 520 MiB (500 MiB / 510 MiB / 520 MiB)" in line(row, 2)


def test_the_line_shows_each_run_then_min_median_max_goal_and_verdict():
    row = Row(SPECS["get_running"])
    for value in [(0.040, 0.3), (0.036, 0.1), (0.043, 0.2)]:
        row.add(value)

    assert line(row, 3) == (
        "| `GET /v1/batches/{id}` while a 10,000 batch runs | 40 ms · 36 ms · 43 ms "
        "(36 ms / 40 ms / 43 ms), worst sample 300 ms | ≤ 100 ms | **met** |"
    )


def test_units_are_shown_as_the_issue_gives_them():
    rows = [
        Row(SPECS["makespan"], values=[21.25]),
        Row(SPECS["create_share"], values=[0.943]),
        Row(SPECS["statements_per_server"], values=[26.04]),
        Row(SPECS["create_429"], values=[0]),
        Row(SPECS["post_10k"], values=[2.5]),
        Row(SPECS["waiting_runs"], values=[1.004]),
    ]
    shown = [line(row, 1).split(" | ")[1] for row in rows]

    assert shown == [
        "21.25 × (21.25 × / 21.25 × / 21.25 ×)",
        "94.3% (94.3% / 94.3% / 94.3%)",
        "26.0 (26.0 / 26.0 / 26.0)",
        "0 (0 / 0 / 0)",
        "2.50 s (2.50 s / 2.50 s / 2.50 s)",
        "1.00 (1.00 / 1.00 / 1.00)",
    ]


def test_a_row_not_measured_says_why_and_a_failed_run_is_counted_against_it():
    missing = Row(
        SPECS["task_runs_faults"], missing=["not measured: needs bench_limiter --volumes"]
    )
    partial = Row(SPECS["makespan"], values=[1.5, 1.8], missing=["run 3 failed: RuntimeError: x"])

    assert line(missing, 3) == (
        "| task runs per server with 2 volumes, real faults | not measured: needs "
        "bench_limiter --volumes | ≤ 8 | not measured |"
    )
    assert verdict(partial, 3) == "**met** (2 of 3 runs)"
    assert "; run 3 failed: RuntimeError: x |" in line(partial, 3)


def test_the_table_has_a_header_and_one_line_per_row():
    rows = [Row(spec) for spec in select_rows(["intake"])]

    lines = table(rows, 3)
    assert lines[0] == "| figure | runs (min / median / max) | goal | met? |"
    assert len(lines) == 2 + len(rows)
    assert all(text.endswith("| not measured |") for text in lines[2:])
