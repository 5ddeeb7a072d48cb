"""Fixtures of the chaos suite: run one experiment on the session cluster, SLOs from the marker."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.experiments import ExperimentResult, run_experiment
from harness.slo import slo_for

# Load shape of every scenario (the chaos issue's targets: 2 replicas, about 50 requests/s).
CHAOS_USERS = int(os.environ.get("HARNESS_CHAOS_USERS", "10"))
CHAOS_DURATION_S = float(os.environ.get("HARNESS_CHAOS_DURATION_S", "20"))
CHAOS_RATE_PER_S = float(os.environ.get("HARNESS_CHAOS_RATE_PER_S", "50"))

RunChaos = Callable[..., ExperimentResult]


@pytest.fixture
def chaos_reports_dir(harness_options: Any) -> Path:
    directory = Path(harness_options.reports_dir) / "chaos"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def run_chaos(request: pytest.FixtureRequest, cluster: Any, chaos_reports_dir: Path) -> RunChaos:
    """Run the experiment the test's ``chaos`` marker names, with its SLO overrides.

    ``@pytest.mark.chaos(scenario="pod-delete", max_total_s=5)``: every keyword but
    ``scenario`` overrides a limit of that scenario's SLO; an unknown one fails at once.
    """
    marker = request.node.get_closest_marker("chaos")
    options = dict(marker.kwargs) if marker else {}
    scenario = options.pop("scenario", None)
    if scenario is not None:
        slo_for(scenario, options)  # reject a misspelt limit before any load starts

    def run(name: str | None = None, **kwargs: Any) -> ExperimentResult:
        chosen = name or scenario
        if chosen is None:
            raise pytest.UsageError(f"{request.node.nodeid}: no scenario in its chaos marker")
        return run_experiment(
            cluster,
            chosen,
            users=kwargs.pop("users", CHAOS_USERS),
            duration_s=kwargs.pop("duration_s", CHAOS_DURATION_S),
            rate_per_s=kwargs.pop("rate_per_s", CHAOS_RATE_PER_S),
            out_dir=chaos_reports_dir,
            progress=lambda line: print(line, flush=True),
            slo_overrides={**options, **kwargs.pop("slo_overrides", {})},
            **kwargs,
        )

    return run


def describe(report: dict[str, Any]) -> str:
    """A breach as a person reads it: every failed check with its limit and actual value."""
    failed = [c for c in report["slo"]["checks"] if not c["passed"]]
    lines = [f"{c['name']}: limit {c['limit']}, actual {c['actual']}" for c in failed]
    figures = {
        key: report[key]
        for key in ("requests", "failures", "outage_s", "error_rate_during", "rescheduling_s",
                    "readiness_s", "total_s", "inflight_at_fault")
    }  # fmt: skip
    return f"{report['scenario']} breached its SLO: {'; '.join(lines)}; figures {figures}"
