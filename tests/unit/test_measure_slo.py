"""SLO defaults, overrides and checks."""

from __future__ import annotations

from typing import Any

import pytest

from harness.slo import (
    DEFAULT_SLOS,
    EXPERIMENTS,
    SLO_KEYS,
    Slo,
    SloError,
    check,
    parse_overrides,
    slo_for,
)


def healthy_metrics(**changes: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "failures": 0,
        "error_rate_during": 0.0,
        "server_errors": 0,
        "outage_s": 0.05,
        "rescheduling_s": 0.3,
        "readiness_s": 1.2,
        "replacement_ready_s": 1.5,
        "total_s": 1.5,
        "correct_rate": 1.0,
        "fault_verified": True,
        "inflight_at_fault": 3,
    }
    metrics.update(changes)
    return metrics


def test_every_issue_experiment_has_a_default() -> None:
    expected = {
        "pod-delete",
        "pod-delete-all",
        "pod-crash",
        "llm-kill",
        "chroma-kill",
        "scale-zero",
        "rolling-restart",
    }
    assert expected <= set(EXPERIMENTS)
    assert DEFAULT_SLOS["pod-delete"].max_failed_requests == 0
    assert DEFAULT_SLOS["pod-delete"].max_total_s == 5.0
    assert DEFAULT_SLOS["pod-delete-all"].max_total_s == 15.0


def test_overrides_merge_and_none_removes_a_limit() -> None:
    slo = slo_for("pod-delete", {"max_total_s": 8, "max_failed_requests": None})
    assert slo.max_total_s == 8.0 and isinstance(slo.max_total_s, float)
    assert slo.max_failed_requests is None
    assert DEFAULT_SLOS["pod-delete"].max_total_s == 5.0  # the default is untouched


def test_unknown_limit_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(SloError) as raised:
        slo_for("pod-delete", {"max_totl_s": 8})
    message = str(raised.value)
    assert "max_totl_s" in message
    assert all(key in message for key in SLO_KEYS)


def test_unknown_experiment_and_bad_values_are_rejected() -> None:
    with pytest.raises(SloError, match="pod-delete"):
        slo_for("pod-explode")
    with pytest.raises(SloError, match="number"):
        slo_for("pod-delete", {"max_total_s": "soon"})
    with pytest.raises(SloError, match="whole number"):
        slo_for("pod-delete", {"max_failed_requests": 1.5})
    with pytest.raises(SloError, match="negative"):
        slo_for("pod-delete", {"max_outage_s": -1})
    with pytest.raises(SloError, match="true or false"):
        slo_for("pod-delete", {"require_recovery": 0})


def test_parse_overrides_from_the_command_line() -> None:
    parsed = parse_overrides(
        ["max_total_s=7.5", "max_failed_requests=2", "max_outage_s=none", "require_recovery=false"]
    )
    assert parsed == {
        "max_total_s": 7.5,
        "max_failed_requests": 2,
        "max_outage_s": None,
        "require_recovery": False,
    }
    with pytest.raises(SloError, match="key=value"):
        parse_overrides(["max_total_s"])
    with pytest.raises(SloError, match="not a number"):
        parse_overrides(["max_total_s=fast"])


def test_check_passes_healthy_figures_and_lists_every_limit() -> None:
    result = check(healthy_metrics(), DEFAULT_SLOS["pod-delete"])
    assert result.passed
    assert [c.name for c in result.checks] == [
        "fault_verified",
        "recovered",
        "max_failed_requests",
        "max_total_s",
    ]
    assert result.to_dict()["checks"][3] == {
        "name": "max_total_s",
        "limit": 5.0,
        "actual": 1.5,
        "passed": True,
    }


def test_check_fails_on_a_breach_and_on_missing_figures() -> None:
    slo = DEFAULT_SLOS["pod-delete"]
    breached = check(healthy_metrics(failures=1, total_s=None), slo)
    assert not breached.passed
    assert {c.name for c in breached.breaches} == {
        "recovered",
        "max_failed_requests",
        "max_total_s",
    }
    unverified = check(healthy_metrics(fault_verified=False), slo)
    assert [c.name for c in unverified.breaches] == ["fault_verified"]
    assert "FAIL fault_verified" in unverified.describe()


def test_min_correct_rate_and_inflight_limits() -> None:
    llm = DEFAULT_SLOS["llm-kill"]
    assert check(healthy_metrics(correct_rate=0.96), llm).passed
    assert not check(healthy_metrics(correct_rate=0.5), llm).passed
    assert not check(healthy_metrics(server_errors=1), llm).passed
    crash = Slo(max_failed_over_inflight=0, require_recovery=False)
    assert check(healthy_metrics(failures=3, inflight_at_fault=3), crash).passed
    assert not check(healthy_metrics(failures=4, inflight_at_fault=3), crash).passed
