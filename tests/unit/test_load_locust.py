"""Real Locust, as a subprocess, against a stand-in of the RAG API on loopback.

The stand-in (tests/standins/rag_api_standin.py) answers the golden questions of a small
golden file, one of them wrongly, and is taken down for a known time mid-run.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from harness.load import LoadRun, LoadSpec, start_load
from harness.measure import RequestRecord, request_metrics
from tests.standins.rag_api_standin import RagApiStandIn, process_gone, write_golden

API_KEY = "standin-key"
QUESTIONS = [
    {
        "id": "grace",
        "question": "How long is the default grace period?",
        "expected_doc": "pod-termination",
        "facts": ["30 seconds"],
    },
    {
        "id": "probes",
        "question": "What does a readiness probe gate?",
        "expected_doc": "probes",
        "facts": ["endpoints", "Service"],
    },
    {
        "id": "wrong-one",
        "question": "Which port does the NodePort use?",
        "expected_doc": "services",
        "facts": ["31859"],
    },
]
WRONG = "wrong-one"
DOWNTIME_S = 1.0
# The outage is measured between successful completions, so it can exceed the downtime by
# up to about one request interval on each side (50 requests/s here: ~20 ms each).
OUTAGE_TOLERANCE_S = 0.25


@pytest.fixture
def golden_file(tmp_path: Path) -> Path:
    return write_golden(tmp_path / "golden.yaml", QUESTIONS, min_hit_rate=0.9)


def test_every_request_is_recorded_judged_and_an_outage_is_measured(
    tmp_path: Path, golden_file: Path
) -> None:
    wrong_question = str(next(q["question"] for q in QUESTIONS if q["id"] == WRONG))
    standin = RagApiStandIn(QUESTIONS, wrong=[wrong_question], api_key=API_KEY).start()
    try:
        with start_load(
            standin.url,
            tmp_path / "load",
            users=5,
            duration_s=5,
            user_rps=10,
            golden=golden_file,
            api_key=API_KEY,
        ) as run:
            run.wait_for_requests(25, timeout_s=30)
            time.sleep(0.8)
            standin.stop()
            time.sleep(DOWNTIME_S)
            standin.start()
            down, up = standin.down_since, standin.up_since
            result = run.wait().check()
    finally:
        standin.stop()
    assert result.exit_code == 0 and not result.timed_out
    assert run.pid is not None and process_gone(run.pid)

    records = result.records
    assert result.totals is not None
    # every request Locust counted is in the timeline, and the failures agree
    assert len(records) == result.totals.requests
    assert sum(1 for r in records if not r.ok) == result.totals.failures
    names = Counter(r.name for r in records)
    assert set(names) == {"POST /query", "GET /healthz", "POST /documents"}
    assert names["POST /query"] > names["GET /healthz"] > 0

    # correctness is judged per question: the wrongly answered one is never correct
    answered = [r for r in records if r.name == "POST /query" and r.status == 200]
    # a reply the stop below cuts after its status line is a 200 with a broken body: a
    # failure with no verdict, at most one per user, and only at the moment of the stop
    cut = [r for r in answered if r.correct is None]
    assert len(cut) <= 5, cut
    assert all(not r.ok and r.error for r in cut), cut
    assert down is not None
    assert all(r.start <= down + 0.05 <= r.end + 0.1 for r in cut), cut
    verdicts = {(r.question, r.correct) for r in answered if r.correct is not None}
    assert verdicts == {("grace", True), ("probes", True), (WRONG, False)}
    assert all(
        not r.ok and "wrong answer" in (r.error or "") for r in answered if r.question == WRONG
    )

    # the downtime: connection failures with status 0, never counted as successes
    assert down is not None and up is not None
    refused = [r for r in records if r.status == 0]
    assert refused, "no request failed while the stand-in was down"
    assert all(not r.ok and r.correct is None and r.error for r in refused)
    assert all(down - 0.05 <= r.start <= up + 0.05 for r in refused)

    metrics = request_metrics(records, fault_at=down, recovered_at=up)
    downtime = up - down
    assert metrics.outage_s is not None
    print(
        f"downtime {downtime:.3f} s, measured outage {metrics.outage_s:.3f} s, "
        f"error {metrics.outage_s - downtime:+.3f} s at {result.rps:.0f} requests/s"
    )
    assert abs(metrics.outage_s - downtime) <= OUTAGE_TOLERANCE_S
    assert metrics.connection_errors == len(refused)

    # ingests used the run's namespace and were removed at test stop
    assert any(r.name == "POST /documents" and r.ok for r in records)
    assert standin.documents == {}


def test_without_a_key_ingest_stops_at_401_and_stop_ends_locust_early(
    tmp_path: Path, golden_file: Path
) -> None:
    standin = RagApiStandIn(QUESTIONS, api_key=API_KEY).start()
    try:
        spec = LoadSpec(
            host=standin.url,
            out_dir=tmp_path / "load",
            users=3,
            duration_s=60,
            user_rps=20,
            golden=golden_file,
        )
        began = time.monotonic()
        with LoadRun(spec) as run:
            # an ingest is 1 task in 24, so a fixed count of requests may hold none (about
            # 1 run in 13 at 60): wait for the first 401, then for enough requests after it
            # (about 5 ingests' worth) to show that ingests stay off
            first_401 = run.wait_for_records(
                lambda records: _first_ingest_401(records) is not None,
                "an ingest answered 401",
                timeout_s=20,
            )
            refused_at = _first_ingest_401(first_401)
            assert refused_at is not None
            run.wait_for_records(
                lambda records: sum(1 for r in records if r.start > refused_at) >= 120,
                "120 requests after the first 401",
                timeout_s=20,
            )
            run.stop()  # SIGTERM long before the 60 s run time: Locust writes its statistics
            result = run.wait().check()
        assert time.monotonic() - began < 45
    finally:
        standin.stop()
    ingests = [r for r in result.records if r.name == "POST /documents"]
    assert ingests and all(r.status == 401 for r in ingests), ingests
    # the first 401 turned ingests off: none started after it came back (users run
    # concurrently, so another may already have been in flight)
    assert all(r.start <= refused_at for r in ingests), ingests
    assert sum(1 for r in result.records if r.start > refused_at) >= 120
    assert standin.documents == {}
    assert len(result.records) == result.requests
    assert run.pid is not None and process_gone(run.pid)


def _first_ingest_401(records: list[RequestRecord]) -> float | None:
    """When the first ingest refused with 401 came back (time.time() seconds), if any."""
    ends = [r.end for r in records if r.name == "POST /documents" and r.status == 401]
    return min(ends) if ends else None
