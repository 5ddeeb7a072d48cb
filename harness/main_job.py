"""``harness run``: up, deploy, end-to-end checks, chaos experiments, report, down."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import checks
from harness import cluster as clusters
from harness.providers.base import ClusterUnavailable
from harness.settings import get_settings
from harness.tables import render_pairs, render_table

Progress = Callable[[str], None]


@dataclass
class MainJobOutcome:
    passed: bool
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def _experiment_names(spec: str) -> list[str]:
    from harness.experiments import DEFAULT_RUN, EXPERIMENTS

    if spec == "none":
        return []
    if spec == "default":
        return list(DEFAULT_RUN)
    if spec == "all":
        return list(EXPERIMENTS)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    return names


def run_main_job(
    *,
    cluster: str,
    context: str,
    replicas: int,
    out_dir: Path,
    keep_cluster: bool,
    experiments: str,
    users: int,
    duration_s: float,
    progress: Progress,
    compare_tutorial: bool = True,
    runtime: str = "",
) -> MainJobOutcome:
    from harness.experiments import run_experiment, run_tutorial_comparison, summary_text

    names = _experiment_names(experiments)
    started = time.monotonic()
    handle = clusters.open_cluster(
        cluster, context=context, purpose="run", progress=progress, runtime=runtime
    )
    progress(f"cluster: {handle.name} ({handle.reason})")
    ok, how_to = clusters.preflight(handle)
    if not ok:
        raise ClusterUnavailable(f"{handle.name} cannot be reached: {how_to}")
    out_dir = out_dir / time.strftime("run-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"up: deploying {replicas} rag-api replicas (reports in {out_dir})")
    info = handle.provider.up(replicas=replicas)
    handle.info = info
    clusters.save_current(handle, purpose="run")
    progress(f"up: ready at {info.url} after {time.monotonic() - started:.1f}s")
    check_results: list[checks.CheckResult] = []
    reports: list[dict[str, Any]] = []
    comparison = ""
    passed = False
    try:
        with httpx.Client(base_url=info.url, timeout=get_settings().request_timeout_s) as client:
            steps: list[tuple[str, Callable[[], checks.CheckResult]]] = [
                ("golden questions", lambda: checks.golden_answers(client)),
                ("/docs and /openapi.json", lambda: checks.docs_reachable(client)),
                (
                    "ingest seen by every replica",
                    lambda: checks.ingest_everywhere(client, handle.provider, info.api_key),
                ),
                (
                    "documents survive every pod's deletion",
                    lambda: checks.survives_pod_loss(client, handle.provider, info.api_key),
                ),
                (
                    "rolling restart under traffic",
                    lambda: checks.rolling_restart_clean(handle.provider, info.url),
                ),
                (
                    "scale up and down",
                    lambda: checks.scale_up_and_down(handle.provider, info.url, replicas),
                ),
            ]
            for label, step in steps:
                progress(f"e2e: {label} ...")
                result = step()
                check_results.append(result)
                progress(f"e2e: {label}: {'ok' if result.ok else 'FAILED'} ({result.duration_s}s)")
        for name in names:
            progress(f"chaos: {name} ({users} users, {duration_s:.0f}s) ...")
            experiment = run_experiment(
                handle,
                name,
                users=users,
                duration_s=duration_s,
                out_dir=out_dir,
                progress=progress,
            )
            reports.append(experiment.report)
            verdict = "passed" if experiment.report["slo"]["passed"] else "SLO BREACHED"
            progress(f"chaos: {name}: {verdict}")
        if names and compare_tutorial and handle.name == "local":
            progress("chaos: pod-delete on the tutorial's configuration and on ours ...")
            tutorial, ours, path = run_tutorial_comparison(
                handle,
                users=users,
                duration_s=duration_s,
                out_dir=out_dir,
                progress=progress,
                replicas=replicas,
            )
            reports += [tutorial.report, ours.report]
            comparison = str(path)
            progress(f"chaos: comparison written to {path}")
        passed = all(r.ok for r in check_results) and all(r["slo"]["passed"] for r in reports)
    finally:
        if keep_cluster:
            progress(f"keeping the cluster up ({handle.name}); `harness down` removes it")
        else:
            progress("down: tearing the cluster down")
            try:
                handle.provider.down(keep=not passed)
                clusters.forget_current(purpose="run")
            except Exception as exc:  # teardown must not hide the run's own outcome
                progress(f"down failed: {exc!r}")
    data = {
        "passed": passed,
        "cluster": handle.name,
        "reason": handle.reason,
        "url": info.url,
        "out_dir": str(out_dir),
        "elapsed_s": round(time.monotonic() - started, 1),
        "checks": [
            {
                "name": r.name,
                "ok": r.ok,
                "message": r.message,
                "figures": r.figures,
                "duration_s": r.duration_s,
            }
            for r in check_results
        ],
        "experiments": reports,
        "comparison": comparison,
    }
    (out_dir / "run.json").write_text(json.dumps(data, indent=2, default=str))
    check_table = render_table(
        ("check", "ok", "seconds", "detail"),
        [
            [r.name, r.ok, r.duration_s, (r.message.splitlines() or [""])[0][:70]]
            for r in check_results
        ],
    )
    chaos_table = summary_text(reports) if reports else "(no chaos experiments run)"
    text = "\n\n".join(
        [
            render_pairs(
                [
                    ("result", "PASSED" if passed else "FAILED"),
                    ("cluster", f"{handle.name} ({handle.reason})"),
                    ("reports", str(out_dir)),
                    ("elapsed", f"{data['elapsed_s']}s"),
                ]
            ),
            check_table,
            chaos_table,
        ]
    )
    (out_dir / "summary.txt").write_text(text + "\n")
    return MainJobOutcome(passed, data, text)
