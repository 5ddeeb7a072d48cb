"""Recovery measurements on constructed timelines and pod events with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.measure import (
    RequestRecord,
    percentile,
    pod_metrics,
    read_timeline,
    request_metrics,
)
from harness.providers.base import ClusterEvent, PodInfo

FAULT = 1_000.0


def steady(
    begin: float, end: float, every_s: float, latency_ms: float = 10.0, ok: bool = True
) -> list[RequestRecord]:
    """One request every `every_s` from `begin` (inclusive) to `end` (exclusive)."""
    count = round((end - begin) / every_s)
    return [
        RequestRecord(
            start=begin + i * every_s,
            latency_ms=latency_ms,
            name="POST /query",
            status=200 if ok else 0,
            ok=ok,
            correct=True if ok else None,
            error=None if ok else "ConnectionRefusedError",
        )
        for i in range(count)
    ]


def test_outage_is_the_gap_between_successful_completions_around_the_fault() -> None:
    # ok until 1000.5 (last start 1000.4, done 1000.41), refused until 1002.0, ok again
    records = (
        steady(995.0, 1000.5, 0.1)
        + steady(1000.5, 1002.0, 0.1, latency_ms=1.0, ok=False)
        + steady(1002.0, 1005.0, 0.1)
    )
    metrics = request_metrics(records, fault_at=FAULT, recovered_at=1003.0)
    # last success completes 1000.41, first after the outage completes 1002.01
    assert metrics.outage_s == pytest.approx(1.6, abs=1e-6)
    assert metrics.outage_from == pytest.approx(1000.41)
    assert metrics.outage_to == pytest.approx(1002.01)
    # started in [1000, 1003]: 5 ok + 15 failed + 11 ok (1002.0 .. 1003.0 inclusive)
    assert metrics.requests_during == 31
    assert metrics.failures_during == 15
    assert metrics.error_rate_during == pytest.approx(15 / 31, abs=1e-4)
    assert metrics.requests == 55 + 15 + 30
    assert metrics.failures == metrics.connection_errors == 15
    assert metrics.server_errors == 0
    assert metrics.correct_rate == 1.0
    assert metrics.judged == 85


def test_a_gap_before_the_fault_does_not_count() -> None:
    records = steady(990.0, 992.0, 0.1) + steady(995.0, 1010.0, 0.1)  # 3 s gap, long before
    metrics = request_metrics(records, fault_at=FAULT, recovered_at=1005.0)
    assert metrics.outage_s == pytest.approx(0.1, abs=1e-6)
    assert metrics.error_rate_during == 0.0


def test_no_success_before_the_fault_starts_the_outage_at_the_fault() -> None:
    records = steady(1000.0, 1001.0, 0.1, ok=False) + steady(1001.5, 1003.0, 0.1)
    metrics = request_metrics(records, fault_at=FAULT, recovered_at=None)
    assert metrics.outage_s == pytest.approx(1.51, abs=1e-6)  # fault -> 1001.51
    assert metrics.outage_from == FAULT


def test_no_success_after_the_fault_is_none_not_zero() -> None:
    records = steady(995.0, 1000.0, 0.1) + steady(1000.0, 1004.0, 0.1, ok=False)
    metrics = request_metrics(records, fault_at=FAULT, recovered_at=None)
    assert metrics.outage_s is None
    assert metrics.error_rate_during == 1.0
    assert metrics.latency["after"] == {"p50": None, "p95": None, "p99": None}


def test_no_requests_gives_none_figures() -> None:
    metrics = request_metrics([], fault_at=FAULT, recovered_at=1002.0)
    assert metrics.requests == 0
    assert metrics.outage_s is None
    assert metrics.error_rate_during is None
    assert metrics.correct_rate is None
    assert metrics.latency["before"]["p95"] is None


def test_latency_phases_count_only_successful_requests() -> None:
    before = steady(990.0, 1000.0, 1.0, latency_ms=10.0)  # 10 requests at 10 ms
    during = steady(1000.0, 1002.0, 0.5, latency_ms=200.0)  # 4 at 200 ms
    refused = steady(1000.1, 1000.2, 0.1, latency_ms=0.5, ok=False)  # not in latency
    after = steady(1003.0, 1005.0, 1.0, latency_ms=30.0)
    metrics = request_metrics(before + during + refused + after, FAULT, recovered_at=1002.5)
    assert metrics.latency["before"] == {"p50": 10.0, "p95": 10.0, "p99": 10.0}
    assert metrics.latency["during"]["p50"] == 200.0
    assert metrics.latency["after"]["p99"] == 30.0


def test_correct_rate_is_over_judged_answers_and_inflight_is_counted() -> None:
    records = [
        RequestRecord(999.9, 200.0, "POST /query", 200, True, True),  # in flight at the fault
        RequestRecord(1000.5, 5.0, "POST /query", 200, False, False, "wrong answer"),
        RequestRecord(1000.6, 5.0, "POST /query", 200, True, True),
        RequestRecord(1000.7, 5.0, "GET /healthz", 200, True, None),
        RequestRecord(1000.8, 5.0, "POST /query", 503, False, None, "HTTP 503"),
    ]
    metrics = request_metrics(records, FAULT, recovered_at=1001.0)
    assert metrics.judged == 3
    assert metrics.correct_rate == pytest.approx(2 / 3, abs=1e-4)
    assert metrics.inflight_at_fault == 1
    assert metrics.server_errors == 1


def test_percentile_interpolates_linearly() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_read_timeline_sorts_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    lines = [
        json.dumps({"start": 2.0, "latency_ms": 1, "name": "b", "status": 200, "ok": True}),
        json.dumps(
            {
                "start": 1.0,
                "latency_ms": 1,
                "name": "a",
                "status": 0,
                "ok": False,
                "correct": None,
                "error": "refused",
            }
        ),
        '{"start": 3.0, "lat',
    ]
    path.write_text("\n".join(lines))
    records = read_timeline(path)
    assert [r.name for r in records] == ["a", "b"]
    assert read_timeline(tmp_path / "missing.jsonl") == []
    path.write_text('{"broken": 1}\n' + lines[0] + "\n")
    with pytest.raises(ValueError, match="not a timeline record"):
        read_timeline(path)


# ------------------------------------------------------------------ pods


def pod(
    name: str,
    uid: str,
    ready: bool = True,
    restarts: int = 0,
    deleting: bool = False,
    phase: str = "Running",
) -> PodInfo:
    return PodInfo(
        name=name,
        uid=uid,
        phase=phase,
        ready=ready,
        restarts=restarts,
        created=900.0,
        app="rag-api",
        deleting=deleting,
    )


def event(at: float, type_: str, info: PodInfo) -> ClusterEvent:
    return ClusterEvent(kind="pod", type=type_, at=at, monotonic=at, pod=info)  # type: ignore[arg-type]


BEFORE = [pod("rag-api-a", "uid-a"), pod("rag-api-b", "uid-b")]


def test_graceful_delete_of_one_pod() -> None:
    events = [
        event(1000.05, "MODIFIED", pod("rag-api-a", "uid-a", ready=False, deleting=True)),
        event(1000.30, "ADDED", pod("rag-api-c", "uid-c", ready=False, phase="Pending")),
        event(1000.50, "MODIFIED", pod("rag-api-c", "uid-c", ready=False)),
        event(1002.10, "MODIFIED", pod("rag-api-c", "uid-c", ready=True)),  # all ready again
        event(1005.20, "DELETED", pod("rag-api-a", "uid-a", ready=False, deleting=True)),
    ]
    metrics = pod_metrics(events, FAULT, desired_replicas=2, pods_before=BEFORE)
    assert metrics.rescheduling_s == pytest.approx(0.30)
    assert metrics.readiness_s == pytest.approx(1.80)
    assert metrics.replacement_ready_s == pytest.approx(2.10)
    # the old pod still terminating (until 1005.2) is not counted and does not delay recovery
    assert metrics.total_s == pytest.approx(2.10)
    assert metrics.recovered_at == pytest.approx(1002.10)
    assert metrics.fault_verified and metrics.uids_changed and not metrics.restarts_rose
    assert (metrics.pods_after, metrics.ready_after) == (2, 2)
    assert [r.name for r in metrics.replacements] == ["rag-api-c"]


def test_crash_restarts_the_same_pod() -> None:
    events = [
        event(1000.20, "MODIFIED", pod("rag-api-b", "uid-b", ready=False, restarts=1)),
        event(1001.70, "MODIFIED", pod("rag-api-b", "uid-b", ready=True, restarts=1)),
    ]
    metrics = pod_metrics(events, FAULT, desired_replicas=2, pods_before=BEFORE)
    assert metrics.rescheduling_s == pytest.approx(0.20)
    assert metrics.readiness_s == pytest.approx(1.50)
    assert metrics.total_s == pytest.approx(1.70)
    assert metrics.fault_verified and metrics.restarts_rose and not metrics.uids_changed
    assert metrics.replacements[0].how == "restart"


def test_no_recovery_within_the_observation_is_none() -> None:
    events = [
        event(1000.1, "DELETED", pod("rag-api-a", "uid-a", ready=False, deleting=True)),
        event(1000.4, "ADDED", pod("rag-api-c", "uid-c", ready=False, phase="Pending")),
    ]
    metrics = pod_metrics(events, FAULT, desired_replicas=2, pods_before=BEFORE)
    assert metrics.rescheduling_s == pytest.approx(0.4)
    assert metrics.readiness_s is None
    assert metrics.total_s is None and metrics.recovered_at is None
    assert metrics.fault_verified


def test_nothing_happened_is_not_verified_and_not_recovered() -> None:
    events = [event(1000.5, "MODIFIED", pod("rag-api-a", "uid-a"))]
    metrics = pod_metrics(events, FAULT, desired_replicas=2, pods_before=BEFORE)
    assert not metrics.fault_verified
    assert metrics.total_s is None
    assert metrics.rescheduling_s is None


def test_rolling_restart_needs_every_old_pod_replaced() -> None:
    events = [
        event(1000.1, "ADDED", pod("rag-api-c", "uid-c", ready=False)),  # surge pod
        event(1001.0, "MODIFIED", pod("rag-api-c", "uid-c")),
        event(1001.1, "MODIFIED", pod("rag-api-a", "uid-a", ready=False, deleting=True)),
        event(1001.2, "ADDED", pod("rag-api-d", "uid-d", ready=False)),
        event(1001.3, "DELETED", pod("rag-api-a", "uid-a", ready=False, deleting=True)),
        event(1002.0, "MODIFIED", pod("rag-api-d", "uid-d")),
        event(1002.1, "MODIFIED", pod("rag-api-b", "uid-b", ready=False, deleting=True)),
        event(1003.5, "DELETED", pod("rag-api-b", "uid-b", ready=False, deleting=True)),
    ]
    # at 1001.1 two ready pods (b, c) serve, but b is from before the fault: the rollout is
    # half done; only all_replaced waits for it (1002.1: c and d ready, b terminating)
    half = pod_metrics(events, FAULT, desired_replicas=2, pods_before=BEFORE)
    assert half.total_s == pytest.approx(1.1)
    full = pod_metrics(events, FAULT, desired_replicas=2, pods_before=BEFORE, all_replaced=True)
    assert full.total_s == pytest.approx(2.1)
    assert [r.name for r in full.replacements] == ["rag-api-c", "rag-api-d"]
    assert full.rescheduling_s == pytest.approx(0.1)
    assert full.readiness_s == pytest.approx(0.9)


def test_pods_before_can_come_from_the_events_and_other_apps_are_ignored() -> None:
    chroma = PodInfo("chroma-0", "uid-z", "Running", True, 0, 900.0, app="chroma")
    events = [
        event(990.0, "ADDED", BEFORE[0]),
        event(990.0, "ADDED", BEFORE[1]),
        event(1000.2, "DELETED", chroma),  # another app: no effect
        event(1000.3, "MODIFIED", pod("rag-api-a", "uid-a", ready=False, restarts=1)),
        event(1000.9, "MODIFIED", pod("rag-api-a", "uid-a", ready=True, restarts=1)),
    ]
    metrics = pod_metrics(events, FAULT, desired_replicas=2, pods_before=None)
    assert metrics.pods_before == 2
    assert metrics.total_s == pytest.approx(0.9)
    assert not metrics.uids_changed
