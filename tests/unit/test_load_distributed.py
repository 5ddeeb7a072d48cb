"""Locust distributed on this machine (one master, two worker processes) against the RAG API
stand-in (tests/standins/rag_api_standin.py): the timeline is complete and the report is the
same as with one process. The stand-in is taken down for a moment so there is an outage to
measure from the merged timeline.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from harness.load import LoadError, LoadSpec, start_load
from harness.measure import request_metrics
from harness.report import FaultInfo, build_report, validate_report, write_report
from harness.slo import slo_for
from tests.standins.rag_api_standin import (
    SAMPLE_QUESTIONS,
    RagApiStandIn,
    process_gone,
    write_golden,
)

API_KEY = "standin-key"

QUESTIONS = SAMPLE_QUESTIONS


def test_two_workers_give_one_complete_timeline_and_the_same_report(tmp_path: Path) -> None:
    golden = write_golden(tmp_path / "golden.yaml", QUESTIONS)
    standin = RagApiStandIn(QUESTIONS, api_key=API_KEY).start()
    try:
        with start_load(
            standin.url,
            tmp_path / "load",
            users=6,
            duration_s=6,
            user_rps=8,
            golden=golden,
            api_key=API_KEY,
            workers=2,
        ) as run:
            run.wait_for_requests(30, timeout_s=40)
            standin.stop()
            time.sleep(0.6)
            standin.start()
            down, up = standin.down_since, standin.up_since
            result = run.wait().check()
            worker_pids = [worker.pid for worker in run._workers]
    finally:
        standin.stop()
    assert down is not None and up is not None
    assert run.pid is not None and process_gone(run.pid)
    assert len(worker_pids) == 2 and all(process_gone(pid) for pid in worker_pids)
    assert "--master" in result.argv and "--expect-workers" in result.argv

    # both workers ran users: each wrote its log, and the users' requests all reached the file
    for index in range(2):
        log = (tmp_path / "load" / f"locust-worker-{index}.log").read_text()
        assert "Starting Locust" in log or "worker" in log.lower(), log[-2000:]
    assert result.totals is not None
    assert len(result.records) == result.totals.requests > 50
    assert sum(1 for r in result.records if not r.ok) == result.totals.failures
    assert set(Counter(r.name for r in result.records)) >= {"POST /query", "GET /healthz"}
    assert any(r.status == 0 for r in result.records), "the stand-in's downtime left no trace"

    metrics = request_metrics(result.records, fault_at=down, recovered_at=up)
    assert metrics.outage_s is not None and metrics.outage_s >= (up - down) * 0.5
    report = build_report(
        scenario="pod-delete",
        cluster="stand-in",
        replicas=1,
        users=6,
        fault=FaultInfo("stand-in-down", standin.url, down),
        requests=metrics,
        pods=None,
        slo=slo_for("pod-delete", {"require_fault_verified": False, "require_recovery": False}),
        started=result.started_at,
        ended=result.ended_at,
        extra={"locust_workers": 2},
    )
    assert validate_report(report) == []
    files = write_report(report, result.records, tmp_path / "report")
    assert files.timeline_png.stat().st_size > 0 and files.markdown.is_file()


def test_worker_count_is_bounded(tmp_path: Path) -> None:
    spec = LoadSpec(host="http://127.0.0.1:9", out_dir=tmp_path, workers=99)
    with pytest.raises(LoadError, match="workers must be"):
        spec.validate()
    argv = LoadSpec(host="http://127.0.0.1:9", out_dir=tmp_path, workers=2).argv(5557)
    assert argv[argv.index("--expect-workers") + 1] == "2"
    assert argv[argv.index("--master-bind-host") + 1] == "127.0.0.1"
