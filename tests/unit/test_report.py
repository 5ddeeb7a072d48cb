"""Report files: report.json against its documented schema, report.md, timeline.png, tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.measure import RequestRecord, pod_metrics, request_metrics
from harness.providers.base import ClusterEvent, PodInfo
from harness.report import (
    REPORT_KEYS,
    FaultInfo,
    build_report,
    comparison_markdown,
    render_markdown,
    report_schema_markdown,
    slo_verdict,
    summary_markdown,
    summary_text,
    validate_report,
    write_report,
)
from harness.slo import slo_for

REPO_ROOT = Path(__file__).resolve().parents[2]
FAULT = 1_000.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def timeline(outage_from: float, outage_to: float) -> list[RequestRecord]:
    records = []
    for i in range(200):  # 20 rps for 10 s around the fault
        start = 995.0 + i * 0.05
        down = outage_from <= start < outage_to
        records.append(
            RequestRecord(
                start,
                1.0 if down else 12.0 + i % 7,
                "POST /query",
                0 if down else 200,
                not down,
                None if down else True,
                "refused" if down else None,
            )
        )
    return records


def pod(name: str, uid: str, ready: bool = True, deleting: bool = False) -> PodInfo:
    return PodInfo(name, uid, "Running", ready, 0, 900.0, app="rag-api", deleting=deleting)


def experiment(scenario: str, outage_to: float, failures_ok: bool) -> tuple[dict[str, Any], list]:
    records = timeline(1000.0, outage_to)
    before = [pod("rag-api-a", "a"), pod("rag-api-b", "b")]
    events = [
        ClusterEvent("pod", "MODIFIED", 1000.1, 1.0, pod("rag-api-a", "a", False, True)),
        ClusterEvent("pod", "ADDED", 1000.4, 1.0, pod("rag-api-c", "c", False)),
        ClusterEvent("pod", "MODIFIED", outage_to, 2.0, pod("rag-api-c", "c", True)),
    ]
    pods = pod_metrics(events, FAULT, desired_replicas=2, pods_before=before)
    requests = request_metrics(records, FAULT, pods.recovered_at)
    overrides = {} if failures_ok else {"max_total_s": 1.0}
    report = build_report(
        scenario=scenario,
        cluster="local",
        replicas=2,
        users=5,
        fault=FaultInfo("delete", "rag-api-a", FAULT),
        requests=requests,
        pods=pods,
        slo=slo_for("pod-delete-all", overrides),
        started=995.0,
        ended=1010.0,
    )
    return report, records


def test_report_files_are_written_and_match_the_schema(tmp_path: Path) -> None:
    report, records = experiment("pod-delete-all", outage_to=1002.0, failures_ok=True)
    files = write_report(report, records, tmp_path / "pod-delete-all")

    stored = json.loads(files.json.read_text())
    assert validate_report(stored) == []
    assert set(stored) == set(REPORT_KEYS)
    # last success: start 999.95 + 13 ms; first after: start 1002.0 + 12 ms
    assert stored["outage_s"] == pytest.approx(1002.012 - 999.963, abs=1e-6)
    assert stored["total_s"] == pytest.approx(2.0)
    assert stored["fault"] == {"kind": "delete", "target": "rag-api-a", "at": FAULT}
    assert stored["slo"]["passed"] is True
    assert {c["name"] for c in stored["slo"]["checks"]} >= {"max_outage_s", "max_total_s"}
    assert stored["slo"]["limits"]["max_total_s"] == 15.0

    markdown = files.markdown.read_text()
    assert "SLO PASSED" in markdown and "| max_total_s | 15 | 2 | pass |" in markdown
    assert "timeline.png" in markdown

    png = files.timeline_png.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_a_breach_shows_in_markdown_and_summaries(tmp_path: Path) -> None:
    passing, records = experiment("pod-delete-all", outage_to=1000.8, failures_ok=True)
    failing, _ = experiment("pod-delete", outage_to=1003.0, failures_ok=False)
    files = write_report(failing, records, tmp_path / "pod-delete")
    assert "SLO FAILED" in files.markdown.read_text()
    assert "**FAIL**" in files.markdown.read_text()

    text = summary_text([passing, failing])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["SCENARIO", "CLUSTER"]
    assert lines[1].split()[0] == "pod-delete-all" and lines[1].split()[-1] == "PASS"
    assert lines[2].split()[0] == "pod-delete" and lines[2].split()[-1] == "FAIL"

    markdown = summary_markdown([passing, failing])
    assert markdown.startswith("1 of 2 experiments met their SLOs.")
    assert markdown.count("\n| pod-delete") == 2


def test_comparison_puts_two_runs_side_by_side() -> None:
    tutorial, _ = experiment("pod-delete", outage_to=1004.0, failures_ok=False)
    ours, _ = experiment("pod-delete", outage_to=1000.5, failures_ok=True)
    markdown = comparison_markdown(tutorial, ours)
    assert "| figure | tutorial | ours |" in markdown
    outage_row = next(line for line in markdown.splitlines() if "longest outage" in line)
    # from 999.963 to 1004.0 + 17 ms and to 1000.5 + 17 ms
    assert outage_row == "| longest outage (s) | 4.054 | 0.554 |"
    assert f"users saw {tutorial['failures']} failed requests" in markdown


def test_an_informational_run_is_told_apart_from_a_pass_and_a_fail() -> None:
    judged, _ = experiment("pod-delete", outage_to=1000.5, failures_ok=True)
    tutorial, _ = experiment("pod-delete", outage_to=1004.0, failures_ok=True)
    tutorial["extra"] = {**tutorial["extra"], "label": "pod-delete-tutorial",
                         "slo_informational": True}  # fmt: skip
    broken, _ = experiment("pod-delete", outage_to=1004.0, failures_ok=False)
    broken["extra"] = {**broken["extra"], "slo_informational": True}

    assert [slo_verdict(r) for r in (judged, tutorial, broken)] == ["PASS", "INFO", "FAIL"]
    rows = summary_text([judged, tutorial]).splitlines()
    assert rows[2].split()[0] == "pod-delete-tutorial" and rows[2].split()[-1] == "INFO"
    markdown = summary_markdown([judged, tutorial, broken])
    assert markdown.startswith(
        "1 of 2 experiments met their SLOs. 1 informational (figures only, no SLO)."
    )
    comparison = comparison_markdown(tutorial, judged)
    assert "| SLO | info | pass |" in comparison
    assert render_markdown(tutorial).startswith("# Chaos experiment `pod-delete`: SLO none")


def test_validate_report_names_each_problem() -> None:
    report, _ = experiment("pod-delete", outage_to=1001.0, failures_ok=True)
    broken = dict(report)
    del broken["outage_s"]
    broken["total_s"] = "2 s"
    broken["surprise"] = 1
    problems = validate_report(broken)
    assert "missing key 'outage_s'" in problems
    assert "undocumented key 'surprise'" in problems
    assert any(p.startswith("'total_s' is str") for p in problems)
    with pytest.raises(ValueError, match="REPORT_SCHEMA"):
        write_report(broken, [], Path("/nonexistent-never-written"))


def test_docs_schema_is_generated_from_the_code() -> None:
    documented = (REPO_ROOT / "docs" / "report-schema.md").read_text()
    assert documented == report_schema_markdown(), (
        "docs/report-schema.md is stale: python -m harness.report > docs/report-schema.md"
    )
    for key in REPORT_KEYS:
        assert f"| `{key}` |" in documented
