"""Experiment reports: report.json (documented schema), report.md and timeline.png, plus the
summary table across experiments and the side-by-side comparison of two experiments.

    report = build_report(scenario="pod-delete", cluster="local", replicas=2, users=10,
                          fault=FaultInfo("delete", "rag-api-7d9-abcde", fault_at),
                          requests=request_metrics(...), pods=pod_metrics(...),
                          slo=slo_for("pod-delete"), started=..., ended=...)
    files = write_report(report, records, out_dir / "pod-delete")

The schema is REPORT_SCHEMA below; docs/report-schema.md is generated from it
(`python -m harness.report > docs/report-schema.md`) and a unit test keeps the two equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__
from harness.measure import PodMetrics, RequestMetrics, RequestRecord, percentile
from harness.slo import Slo, check
from harness.tables import render_table

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
TIMELINE_PNG = "timeline.png"


@dataclass(frozen=True)
class FaultInfo:
    kind: str  # delete | delete-all | crash | scale-zero | rolling-restart | llm-kill | ...
    target: str  # pod, deployment or service the fault hit
    at: float  # epoch seconds when the fault was injected


_LATENCY = "object: before/during/after -> {p50, p95, p99} in ms (successful requests)"
# (key, JSON type, meaning). Every key is always present; a figure that could not be measured
# (e.g. no recovery within the observation) is null, never 0.
REPORT_SCHEMA: tuple[tuple[str, str, str], ...] = (
    ("scenario", "string", "experiment name, e.g. `pod-delete`"),
    ("cluster", "string", "provider that ran it: local, minikube, kind, k3d, existing"),
    ("replicas", "integer", "desired replicas of the Deployment under test"),
    ("users", "integer", "Locust users"),
    ("requests", "integer", "requests sent during the whole load run"),
    ("failures", "integer", "requests that failed (status, schema or wrong answer)"),
    ("connection_errors", "integer", "failed requests without any response (status 0)"),
    ("server_errors", "integer", "responses with HTTP status 5xx"),
    ("inflight_at_fault", "integer", "requests started before the fault and ended after it"),
    ("rescheduling_s", "number|null", "fault -> first replacement pod (or restart) seen"),
    ("readiness_s", "number|null", "replacement seen -> replacement Ready"),
    ("replacement_ready_s", "number|null", "fault -> replacement Ready"),
    ("total_s", "number|null", "fault -> all desired replicas Ready again"),
    ("outage_s", "number|null", "longest span without a successful response around the fault"),
    ("error_rate_during", "number|null", "failed / all requests started in [fault, recovery]"),
    ("requests_during", "integer", "requests started in [fault, recovery]"),
    ("failures_during", "integer", "failed requests among them"),
    ("latency", "object", _LATENCY),
    ("correct_rate", "number|null", "correct / judged answers (questions with a valid answer)"),
    ("judged", "integer", "answers judged for correctness"),
    ("fault_verified", "boolean", "the fault happened: pod UIDs changed or restarts rose"),
    ("fault", "object", "{kind, target, at}: what was injected where, at (epoch s)"),
    ("recovered_at", "number|null", "epoch seconds when all replicas were Ready again"),
    ("pods", "object", "pod detail: pods_before, pods_after, ready_after, replacements[]"),
    ("slo", "object", "{passed, checks: [{name, limit, actual, passed}], limits}"),
    ("started", "number", "epoch seconds when the load started"),
    ("ended", "number", "epoch seconds when the experiment ended"),
    ("harness_version", "string", "version of this harness"),
    ("extra", "object", "scenario-specific details (free form)"),
)
REPORT_KEYS: tuple[str, ...] = tuple(key for key, _, _ in REPORT_SCHEMA)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
}


def report_schema_markdown() -> str:
    lines = [
        "# report.json",
        "",
        "Written by `harness.report.write_report` for every chaos experiment, beside `report.md`",
        "and `timeline.png`. Times are seconds; epoch times are UTC seconds. A figure that could",
        "not be measured (for example no recovery within the observation) is `null`, never 0.",
        "Definitions of the figures: `harness/measure.py`. Generated from",
        "`harness.report.REPORT_SCHEMA` (`python -m harness.report > docs/report-schema.md`).",
        "",
        "| key | type | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{key}` | {kind} | {meaning} |" for key, kind, meaning in REPORT_SCHEMA]
    return "\n".join(lines) + "\n"


def validate_report(report: Mapping[str, Any]) -> list[str]:
    """Problems with a report against REPORT_SCHEMA (empty when it conforms)."""
    problems = [f"missing key {key!r}" for key in REPORT_KEYS if key not in report]
    problems += [f"undocumented key {key!r}" for key in report if key not in REPORT_KEYS]
    for key, kind, _ in REPORT_SCHEMA:
        if key not in report:
            continue
        value = report[key]
        allowed: tuple[type, ...] = ()
        for part in kind.split("|"):
            allowed += (type(None),) if part == "null" else _JSON_TYPES[part]
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if not isinstance(value, allowed) or wrong_bool:
            problems.append(f"{key!r} is {type(value).__name__}, schema says {kind}")
    return problems


def build_report(
    *,
    scenario: str,
    cluster: str,
    replicas: int,
    users: int,
    fault: FaultInfo,
    requests: RequestMetrics,
    pods: PodMetrics | None,
    slo: Slo,
    started: float,
    ended: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.json content, with the SLO checked against it. `pods` may be None for
    faults that do not touch pods (then pod figures are null and the fault is unverified)."""
    report: dict[str, Any] = {
        "scenario": scenario,
        "cluster": cluster,
        "replicas": replicas,
        "users": users,
        "requests": requests.requests,
        "failures": requests.failures,
        "connection_errors": requests.connection_errors,
        "server_errors": requests.server_errors,
        "inflight_at_fault": requests.inflight_at_fault,
        "rescheduling_s": pods.rescheduling_s if pods else None,
        "readiness_s": pods.readiness_s if pods else None,
        "replacement_ready_s": pods.replacement_ready_s if pods else None,
        "total_s": pods.total_s if pods else None,
        "outage_s": requests.outage_s,
        "error_rate_during": requests.error_rate_during,
        "requests_during": requests.requests_during,
        "failures_during": requests.failures_during,
        "latency": requests.latency,
        "correct_rate": requests.correct_rate,
        "judged": requests.judged,
        "fault_verified": bool(pods and pods.fault_verified),
        "fault": {"kind": fault.kind, "target": fault.target, "at": fault.at},
        "recovered_at": pods.recovered_at if pods else None,
        "pods": _pod_detail(pods),
        "slo": {},
        "started": started,
        "ended": ended,
        "harness_version": __version__,
        "extra": {
            "outage_from": requests.outage_from,
            "outage_to": requests.outage_to,
            **dict(extra or {}),
        },
    }
    result = check(report, slo)
    report["slo"] = {**result.to_dict(), "limits": slo.limits()}
    return report


def _pod_detail(pods: PodMetrics | None) -> dict[str, Any]:
    if pods is None:
        return {}
    detail = pods.to_dict()
    keep = ("pods_before", "pods_after", "ready_after", "desired_replicas", "uids_changed",
            "restarts_rose", "replacements")  # fmt: skip
    return {key: detail[key] for key in keep}


@dataclass(frozen=True)
class ReportFiles:
    directory: Path
    json: Path
    markdown: Path
    timeline_png: Path


def write_report(
    report: Mapping[str, Any], records: Sequence[RequestRecord], out_dir: Path
) -> ReportFiles:
    """report.json, report.md and timeline.png in `out_dir` (created)."""
    problems = validate_report(report)
    if problems:
        raise ValueError(f"report does not match REPORT_SCHEMA: {problems}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir, out_dir / REPORT_JSON, out_dir / REPORT_MD, out_dir / TIMELINE_PNG)
    files.json.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    files.markdown.write_text(render_markdown(report, TIMELINE_PNG), encoding="utf-8")
    plot_timeline(
        records,
        fault_at=report["fault"]["at"],
        recovered_at=report["recovered_at"],
        outage=(report["extra"].get("outage_from"), report["extra"].get("outage_to")),
        path=files.timeline_png,
        title=f"{report['scenario']} on {report['cluster']}",
    )
    return files


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") + unit
    return f"{value}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


FIGURES: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("failures", "failed requests"),
    ("connection_errors", "no response (status 0)"),
    ("server_errors", "HTTP 5xx"),
    ("error_rate_during", "error rate during recovery"),
    ("outage_s", "longest outage (s)"),
    ("rescheduling_s", "rescheduling (s)"),
    ("readiness_s", "readiness (s)"),
    ("total_s", "total recovery (s)"),
    ("correct_rate", "correct answers"),
    ("fault_verified", "fault verified"),
)


def _figure(report: Mapping[str, Any], key: str) -> str:
    if key in {"error_rate_during", "correct_rate"}:
        return _pct(report.get(key))
    return _fmt(report.get(key))


def render_markdown(report: Mapping[str, Any], png_name: str | None = TIMELINE_PNG) -> str:
    slo = report["slo"]
    verdict = {"PASS": "PASSED", "INFO": "none (informational run; its checks passed)"}.get(
        slo_verdict(report), "FAILED"
    )
    fault = report["fault"]
    lines = [
        f"# Chaos experiment `{report['scenario']}`: SLO {verdict}",
        "",
        f"Cluster `{report['cluster']}`, {report['replicas']} replicas, {report['users']} "
        f"Locust users. Fault `{fault['kind']}` on `{fault['target']}`.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_figure(report, key)} |" for key, label in FIGURES]
    lines += ["", "## Latency of successful requests (ms)", "",
              "| phase | p50 | p95 | p99 |", "|---|---|---|---|"]  # fmt: skip
    for phase in ("before", "during", "after"):
        row = report["latency"].get(phase, {})
        lines.append(
            f"| {phase} | {_fmt(row.get('p50'))} | {_fmt(row.get('p95'))} | "
            f"{_fmt(row.get('p99'))} |"
        )
    lines += ["", "## SLO checks", "", "| check | limit | actual | result |", "|---|---|---|---|"]
    for item in slo.get("checks", []):
        lines.append(
            f"| {item['name']} | {_fmt(item['limit'])} | {_fmt(item['actual'])} | "
            f"{'pass' if item['passed'] else '**FAIL**'} |"
        )
    if png_name:
        lines += ["", f"![requests, errors and latency over time]({png_name})"]
    return "\n".join(lines) + "\n"


SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scenario", "scenario"),
    ("cluster", "cluster"),
    ("requests", "requests"),
    ("failures", "failed"),
    ("error_rate_during", "err rate"),
    ("outage_s", "outage s"),
    ("rescheduling_s", "resched s"),
    ("readiness_s", "ready s"),
    ("total_s", "total s"),
    ("correct_rate", "correct"),
    ("fault_verified", "verified"),
)


def _summary_rows(reports: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for report in reports:
        row: list[Any] = [report.get(key) for key, _ in SUMMARY_COLUMNS]
        # two runs of one scenario (the tutorial's and ours) are told apart by their label
        label = (report.get("extra") or {}).get("label")
        if label and SUMMARY_COLUMNS[0][0] == "scenario":
            row[0] = label
        row.append(slo_verdict(report))
        rows.append(row)
    return rows


def slo_verdict(report: Mapping[str, Any]) -> str:
    """PASS or FAIL; INFO for a run kept for its figures (no SLO on them) whose checks passed."""
    if not report["slo"].get("passed"):
        return "FAIL"
    return "INFO" if (report.get("extra") or {}).get("slo_informational") else "PASS"


def summary_text(reports: Sequence[Mapping[str, Any]]) -> str:
    """A table for the terminal at the end of `harness run`."""
    headers = [label for _, label in SUMMARY_COLUMNS] + ["slo"]
    return render_table(headers, _summary_rows(reports))


def summary_markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    headers = [label for _, label in SUMMARY_COLUMNS] + ["SLO"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    rows = _summary_rows(reports)
    for report, row in zip(reports, rows, strict=True):
        cells = [
            _figure(report, key) if key in {"error_rate_during", "correct_rate"} else _fmt(value)
            for (key, _), value in zip(SUMMARY_COLUMNS, row, strict=False)
        ]
        cells.append(_verdict_cell(row[-1]))
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = [row[-1] for row in rows]
    judged = len(verdicts) - verdicts.count("INFO")
    head = f"{verdicts.count('PASS')} of {judged} experiments met their SLOs."
    if "INFO" in verdicts:
        head += f" {verdicts.count('INFO')} informational (figures only, no SLO)."
    return head + "\n\n" + "\n".join(lines) + "\n"


def _verdict_cell(verdict: str) -> str:
    return {"PASS": "pass", "INFO": "info"}.get(verdict, "**FAIL**")


def comparison_markdown(
    left: Mapping[str, Any],
    right: Mapping[str, Any],
    left_label: str = "tutorial",
    right_label: str = "ours",
) -> str:
    """Two runs of an experiment side by side (e.g. the tutorial's configuration and ours)."""
    lines = [
        f"# `{left['scenario']}`: {left_label} vs {right_label}",
        "",
        f"| figure | {left_label} | {right_label} |",
        "|---|---|---|",
        f"| replicas | {left['replicas']} | {right['replicas']} |",
    ]
    lines += [
        f"| {label} | {_figure(left, key)} | {_figure(right, key)} |" for key, label in FIGURES
    ]
    for phase in ("before", "during", "after"):
        lines.append(
            f"| p95 latency {phase} (ms) | {_fmt(left['latency'][phase].get('p95'))} | "
            f"{_fmt(right['latency'][phase].get('p95'))} |"
        )
    lines.append(
        f"| SLO | {_verdict_cell(slo_verdict(left))} | {_verdict_cell(slo_verdict(right))} |"
    )
    lines += ["", _comparison_sentence(left, right, left_label, right_label)]
    return "\n".join(lines) + "\n"


def _comparison_sentence(
    left: Mapping[str, Any], right: Mapping[str, Any], left_label: str, right_label: str
) -> str:
    def outage(report: Mapping[str, Any]) -> str:
        value = report.get("outage_s")
        return "an outage that did not end" if value is None else f"{value:.2f} s of outage"

    return (
        f"With the {left_label} configuration users saw {left['failures']} failed requests "
        f"and {outage(left)}; with {right_label}, {right['failures']} failed requests and "
        f"{outage(right)}."
    )


def plot_timeline(
    records: Sequence[RequestRecord],
    fault_at: float,
    recovered_at: float | None,
    path: Path,
    outage: tuple[float | None, float | None] = (None, None),
    title: str = "",
) -> Path:
    """Requests per second (ok vs failed, 1 s buckets) and latency over time, seconds relative
    to the fault; the fault, the recovery and the longest outage are marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [1, 1]}
    )
    if records:
        first = math.floor(min(r.start for r in records) - fault_at)
        last = math.ceil(max(r.end for r in records) - fault_at)
        buckets = list(range(first, max(last, first + 1)))
        ok_counts = dict.fromkeys(buckets, 0)
        failed_counts = dict.fromkeys(buckets, 0)
        latencies: dict[int, list[float]] = {b: [] for b in buckets}
        for record in records:
            bucket = math.floor(record.start - fault_at)
            bucket = min(max(bucket, buckets[0]), buckets[-1])
            if record.ok:
                ok_counts[bucket] += 1
                latencies[bucket].append(record.latency_ms)
            else:
                failed_counts[bucket] += 1
        ok_series = [ok_counts[b] for b in buckets]
        failed_series = [failed_counts[b] for b in buckets]
        throughput.bar(buckets, ok_series, width=1.0, align="edge", color="tab:green",
                       label="ok")  # fmt: skip
        throughput.bar(buckets, failed_series, width=1.0, align="edge", bottom=ok_series,
                       color="tab:red", label="failed")  # fmt: skip
        ok_records = [r for r in records if r.ok]
        latency.scatter([r.start - fault_at for r in ok_records],
                        [r.latency_ms for r in ok_records], s=4, color="tab:blue",
                        alpha=0.4, label="ok request")  # fmt: skip
        failed_records = [r for r in records if not r.ok]
        latency.scatter([r.start - fault_at for r in failed_records],
                        [r.latency_ms for r in failed_records], s=10, marker="x",
                        color="tab:red", label="failed request")  # fmt: skip
        # a bucket without successes is a gap in the line (nan), not a zero
        p95 = [_or_nan(percentile(latencies[b], 95)) for b in buckets]
        latency.step([b + 0.5 for b in buckets], p95, where="mid", color="black",
                     linewidth=1, label="p95 per second")  # fmt: skip
    for axis in (throughput, latency):
        axis.axvline(0.0, color="tab:red", linestyle="--", linewidth=1.2, label="fault")
        if recovered_at is not None:
            axis.axvline(recovered_at - fault_at, color="tab:green", linestyle="--",
                         linewidth=1.2, label="all replicas Ready")  # fmt: skip
        if outage[0] is not None and outage[1] is not None:
            axis.axvspan(outage[0] - fault_at, outage[1] - fault_at, color="tab:orange",
                         alpha=0.2, label="longest outage")  # fmt: skip
    throughput.set_ylabel("requests / s")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds since the fault")
    throughput.legend(loc="upper right", fontsize="small")
    latency.legend(loc="upper right", fontsize="small")
    if title:
        throughput.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def load_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


if __name__ == "__main__":  # regenerate docs/report-schema.md
    print(report_schema_markdown(), end="")
